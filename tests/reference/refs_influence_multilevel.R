# Reference values for the influence diagnostics of the three-level model (alliancemeta.studies.multilevel.influence):
#   cooks.distance, dfbetas and rstudent of an rma.mv fit with random = ~ 1 | study/effect, deleting one
#   study (cluster = study) or one effect size (no cluster), hatvalues, rstandard (with cluster = study), and
#   the leave-one-study-out fits themselves (sigma2, coefficients, se, CI) from explicit rma.mv refits.
# Datasets (read, never rewritten, from tests/reference/data, which refs_multilevel.R exports):
#   - konstantopoulos2011: 56 effects, schools in 11 districts (also deleting single effects);
#   - crede2010: 97 correlations (ZCOR) in 68 studies, intercept only (z) and with the moderator criterion (t);
#   - alliance_synthetic: the first 40 study_ids of data/raw/alliance_synthetic.csv (ZCOR), SYNTHETIC, when present.
# Sourced by make_refs.R after common.R; run from the repository root. Writes
# tests/reference/influence_multilevel.json (about 1 minute).
#
# Every case records the code that ran: `setup` builds `dat`, `call` fits `res`, and each block stores the
# call that produced it. rma.mv maximises the REML likelihood with nlminb, and metafor's deletion functions
# pass the model's control on to every refit, with the full-data sigma2 as starting values. Started at the
# optimum of the full data, nlminb reports failure for many deletions at rel.tol = 1e-12 or 1e-11
# (konstantopoulos2011: 3 and 1 of 11 districts; crede2010: 43 and 26 of 68 studies), and metafor then
# returns NA for them; at its default rel.tol = 1e-10 every deletion converges, so CTRL keeps that
# tolerance (stated explicitly) and only raises the iteration limits. Started that close to the optimum,
# nlminb stops after few iterations: the deleted sigma2 are within about 6e-8 (absolute) of the REML optimum.
# In alliance_synthetic40 the full-data sigma2_within is at the boundary 0 (nlminb stops at 2.8e-11, on its
# log scale); started there, the refit without study S025 cannot leave it although its optimum is inside, so
# `loo_cold` also stores the refits from rma.mv's own starting values. The explicit refits under `loo` repeat the refits metafor makes internally
# (same data, control and starting values), so their sigma2 are the ones behind
# cooks.distance/dfbetas/rstudent, and the Python tests also recompute every diagnostic at those sigma2.

CTRL <- "rel.tol=1e-10, iter.max=10000, eval.max=10000"
DATA_DIR <- file.path("tests", "reference", "data")

DATASETS <- list(
  konstantopoulos2011 = list(
    data = file.path(DATA_DIR, "konstantopoulos2011.csv"),
    setup = sprintf('dat <- read.csv("%s")', file.path(DATA_DIR, "konstantopoulos2011.csv")),
    outer = "district", inner = "school"
  ),
  crede2010 = list(
    data = file.path(DATA_DIR, "crede2010.csv"),
    setup = sprintf('dat <- read.csv("%s")', file.path(DATA_DIR, "crede2010.csv")),
    outer = "studyid", inner = "esid"
  )
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  DATASETS$alliance_synthetic40 <- list(
    data = "data/raw/alliance_synthetic.csv",
    setup = paste(
      'dat <- read.csv("data/raw/alliance_synthetic.csv")',
      "dat <- dat[dat$study_id %in% unique(dat$study_id)[1:40], ]",
      'dat <- escalc("ZCOR", ri=r, ni=n, data=dat)',
      "dat$es <- seq_len(nrow(dat))",
      sep = "; "
    ),
    subset_studies = 40, outer = "study_id", inner = "es"
  )
} else {
  message("refs_influence_multilevel.R: data/raw/alliance_synthetic.csv not found; its case is skipped")
}

unnamed <- function(x) unname(as.numeric(x))

# The explicit leave-one-out refits, as metafor's deletion functions make them (control with the full-data
# sigma2 as starting values; with warm = FALSE from rma.mv's own starting values instead, to show where the
# warm start is trapped at the boundary, see the alliance_synthetic40 note below): one per cluster in the order of the cluster ids' first appearance, or (cluster
# NULL) one per effect size in data order.
loo_block <- function(env, args, cluster, warm = TRUE) {
  unit <- if (is.null(cluster)) "seq_len(nrow(dat))" else cluster
  ids <- if (is.null(cluster)) seq_len(nrow(env$dat)) else unique(env$dat[[cluster]])
  call <- sprintf(
    "rma.mv(%s, subset=%s != id, control=list(%s%s))",
    paste(args, collapse = ", "), unit, CTRL, if (warm) ", sigma2.init=res$sigma2" else ""
  )
  fits <- lapply(ids, function(id) {
    env$id <- id
    eval(parse(text = call), envir = env)
  })
  list(
    call = call, units = I(as.character(ids)),
    sigma2 = do.call(rbind, lapply(fits, function(f) f$sigma2)),
    b = do.call(rbind, lapply(fits, function(f) unnamed(f$b))),
    se = do.call(rbind, lapply(fits, function(f) unnamed(f$se))),
    pval = do.call(rbind, lapply(fits, function(f) unnamed(f$pval))),
    ci.lb = do.call(rbind, lapply(fits, function(f) unnamed(f$ci.lb))),
    ci.ub = do.call(rbind, lapply(fits, function(f) unnamed(f$ci.ub))),
    k = vapply(fits, function(f) f$k, numeric(1)),
    logLik = vapply(fits, function(f) as.numeric(logLik(f)), numeric(1))
  )
}

# cooks.distance / dfbetas / rstudent with (cluster = study) or without (single effects) a cluster.
deletion_blocks <- function(env, cluster) {
  carg <- if (is.null(cluster)) "" else sprintf(", cluster=dat$%s", cluster)
  calls <- list(
    cooks = sprintf("cooks.distance(res%s)", carg),
    dfbetas = sprintf("dfbetas(res%s)", carg),
    rstudent = sprintf("rstudent(res%s)", carg)
  )
  cd <- run_collecting_warnings(calls$cooks, env)$value
  dfb <- run_collecting_warnings(calls$dfbetas, env)$value
  rs <- run_collecting_warnings(calls$rstudent, env)$value
  out <- list(
    cooks = list(call = calls$cooks, units = I(names(cd)), values = unnamed(cd)),
    dfbetas = list(call = calls$dfbetas, units = I(rownames(dfb)), values = unname(as.matrix(dfb)))
  )
  obs <- if (is.null(cluster)) rs else rs$obs
  out$rstudent <- list(call = calls$rstudent, resid = unnamed(obs$resid), se = unnamed(obs$se), z = unnamed(obs$z))
  if (!is.null(cluster)) {
    out$rstudent$units <- I(as.character(rs$cluster$slab))
    out$rstudent$X2 <- unnamed(rs$cluster$X2)
    out$rstudent$k <- unnamed(rs$cluster$k)
  }
  out
}

influence_case <- function(ds, test, mods = NULL, effects = FALSE) {
  info <- DATASETS[[ds]]
  env <- new.env(parent = globalenv())
  eval(parse(text = info$setup), envir = env)
  args <- c("yi", "vi", if (!is.null(mods)) sprintf("mods=%s", mods),
            sprintf("random=~1|%s/%s", info$outer, info$inner), "data=dat", 'method="REML"', sprintf('test="%s"', test))
  call <- sprintf("res <- rma.mv(%s, control=list(%s))", paste(args, collapse = ", "), CTRL)
  fitted <- run_collecting_warnings(call, env)
  res <- env$res
  hat_call <- "hatvalues(res)"
  rst_call <- sprintf("rstandard(res, cluster=dat$%s)", info$outer)
  rst <- run_collecting_warnings(rst_call, env)$value
  case <- list(
    dataset = ds, data = info$data, setup = info$setup, call = call, cluster = info$outer, mods = mods,
    X_colnames = I(colnames(res$X)), test = test, warnings = fitted$warnings,
    subset_studies = info$subset_studies,
    fit = list(sigma2 = res$sigma2, b = unnamed(res$b), se = unnamed(res$se), vb = unname(res$vb), k = res$k,
               p = res$p, n_clusters = res$s.nlevels[1]),
    hat = list(call = hat_call, values = unnamed(run_collecting_warnings(hat_call, env)$value)),
    rstandard = list(call = rst_call, resid = unnamed(rst$obs$resid), se = unnamed(rst$obs$se),
                     z = unnamed(rst$obs$z), units = I(as.character(rst$cluster$slab)),
                     X2 = unnamed(rst$cluster$X2), k = unnamed(rst$cluster$k)),
    study = deletion_blocks(env, paste0(info$outer)),
    loo = loo_block(env, args, info$outer),
    loo_cold = loo_block(env, args, info$outer, warm = FALSE)
  )
  if (effects) case$effect <- c(deletion_blocks(env, NULL), list(loo = loo_block(env, args, NULL)))
  case[!vapply(case, is.null, logical(1))]
}

cases <- list()
cases[["konstantopoulos2011/z"]] <- influence_case("konstantopoulos2011", "z", effects = TRUE)
cases[["crede2010/z"]] <- influence_case("crede2010", "z")
cases[["crede2010/criterion/t"]] <- influence_case("crede2010", "t", mods = "~ criterion")
if (!is.null(DATASETS$alliance_synthetic40)) cases[["alliance_synthetic40/t"]] <- influence_case("alliance_synthetic40", "t")

write_ref("influence_multilevel", cases)
