# Reference values for the three-level engine (alliancemeta.studies.multilevel):
#   rma.mv(yi, vi, random = ~ 1 | study/effect) by REML with test "z" and "t", predict(), the
#   multilevel I^2, robust(clubSandwich = TRUE) (CR2 + Satterthwaite, HTZ Wald test) with predict(),
#   meta-regression with one moderator, a fit with sigma2_within at the boundary 0, and
#   aggregate(escalc, cluster, rho, struct = "CS") for rho = 0.5 and 0.8.
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/multilevel.json
# and the data it fitted to tests/reference/data/{konstantopoulos2011,crede2010,within_zero}.csv.
#
# Every case records the code that ran: `setup` builds `dat`, `call` fits `res`, and the predict/robust
# calls are stored next to their results. rma.mv maximises the REML likelihood with nlminb on numerical
# derivatives; CTRL tightens its relative tolerance to 1e-12 (1e-14 makes nlminb report failure), which is
# the best the optimiser reaches: the stored sigma2 are accurate to about 1e-8 (relative), far below RTOL.

suppressPackageStartupMessages(library(clubSandwich))

CTRL <- "control=list(rel.tol=1e-12, iter.max=10000, eval.max=10000)"
DATA_DIR <- file.path("tests", "reference", "data")

# ---- data ------------------------------------------------------------------------------------------
# (a) Konstantopoulos (2011): 56 standardised mean differences from schools nested in 11 districts.
kon <- metadat::dat.konstantopoulos2011[, c("district", "school", "year", "yi", "vi")]
write_csv17(kon, file.path(DATA_DIR, "konstantopoulos2011.csv"))
# (b) Crede et al. (2010): 97 correlations (class attendance and grades) from samples nested in 68 studies.
crede <- escalc("ZCOR", ri = ri, ni = ni, data = metadat::dat.crede2010)
# Some samples report two criteria (grade and GPA), so the effects are indexed by `esid` within studies.
crede <- data.frame(studyid = crede$studyid, esid = seq_len(nrow(crede)), sampleid = crede$sampleid,
                    criterion = crede$criterion,
                    ni = crede$ni, ri = crede$ri, yi = as.numeric(crede$yi), vi = as.numeric(crede$vi))
write_csv17(crede, file.path(DATA_DIR, "crede2010.csv"))
# (e) Simulated (seed 20261121): 30 studies with 1-4 correlations each; the within-study spread of the
# Fisher-z values is drawn at 0.3 x the sampling SD, so the REML estimate of sigma2_within is at 0.
set.seed(20261121)
n_per <- sample(1:4, 30, replace = TRUE)
sim <- data.frame(study = rep(sprintf("S%02d", 1:30), n_per))
sim$es <- sequence(n_per)
sim$ni <- sample(30:300, nrow(sim), replace = TRUE)
sim$vi <- 1 / (sim$ni - 3)
u <- rnorm(30, 0, 0.1)
sim$yi <- 0.3 + u[rep(1:30, n_per)] + 0.3 * sqrt(sim$vi) * rnorm(nrow(sim))
write_csv17(sim, file.path(DATA_DIR, "within_zero.csv"))

DATASETS <- list(
  konstantopoulos2011 = list(path = file.path(DATA_DIR, "konstantopoulos2011.csv"), setup = "dat <- read.csv(\"%s\")",
                             outer = "district", inner = "school"),
  crede2010 = list(path = file.path(DATA_DIR, "crede2010.csv"), setup = "dat <- read.csv(\"%s\")",
                   outer = "studyid", inner = "esid"),
  within_zero = list(path = file.path(DATA_DIR, "within_zero.csv"), setup = "dat <- read.csv(\"%s\")",
                     outer = "study", inner = "es")
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  DATASETS$alliance_synthetic <- list(
    path = "data/raw/alliance_synthetic.csv",
    setup = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\")); dat$es <- seq_len(nrow(dat))",
    outer = "study_id", inner = "es")
} else {
  message("refs_multilevel.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

# ---- fits ------------------------------------------------------------------------------------------
pred_fields <- function(pr) {
  pick <- function(name) if (is.null(pr[[name]])) NA_real_ else unname(c(pr[[name]]))
  list(pred = pick("pred"), se = pick("se"), ci.lb = pick("ci.lb"), ci.ub = pick("ci.ub"),
       pi.lb = pick("pi.lb"), pi.ub = pick("pi.ub"))
}

# Multilevel I^2 (metafor's documentation of rma.mv; Cheung 2014; Nakagawa & Santos 2012), from the
# dense P matrix so that the Python O(k) version is checked against an independent computation.
i2_multilevel <- function(res) {
  W <- diag(1 / res$vi)
  X <- model.matrix(res)
  P <- W - W %*% X %*% solve(t(X) %*% W %*% X) %*% t(X) %*% W
  typical <- (res$k - res$p) / sum(diag(P))
  total <- sum(res$sigma2) + typical
  list(I2 = 100 * sum(res$sigma2) / total, I2_levels = 100 * res$sigma2 / total)
}

# fit, predict, robust(clubSandwich = TRUE) and its predict for the model `res` in `env`.
ml_blocks <- function(env, info, pr_call) {
  res <- env$res
  rob_call <- sprintf("robust(res, cluster=dat$%s, clubSandwich=TRUE)", info$outer)
  rob <- run_collecting_warnings(rob_call, env)
  env$rob <- rob$value
  rpr_call <- sub("predict(res", "predict(rob", pr_call, fixed = TRUE)
  i2 <- i2_multilevel(res)
  list(
    fit = list(
      sigma2 = res$sigma2, b = unname(c(res$b)), se = unname(res$se), zval = unname(res$zval),
      pval = unname(res$pval), ci.lb = unname(res$ci.lb), ci.ub = unname(res$ci.ub), vb = unname(res$vb),
      QE = res$QE, QEp = res$QEp, QM = res$QM, QMdf = res$QMdf, QMp = res$QMp,
      logLik = as.numeric(logLik(res)), k = res$k, p = res$p, ddf = unname(res$ddf),
      n_clusters = res$s.nlevels[1], I2 = i2$I2, I2_levels = i2$I2_levels
    ),
    predict = c(list(call = pr_call), pred_fields(run_collecting_warnings(pr_call, env)$value)),
    robust = list(
      call = rob_call, warnings = rob$warnings,
      b = unname(c(rob$value$b)), se = unname(rob$value$se), tval = unname(rob$value$zval),
      df = unname(rob$value$ddf), pval = unname(rob$value$pval), ci.lb = unname(rob$value$ci.lb),
      ci.ub = unname(rob$value$ci.ub), vb = unname(rob$value$vb),
      QM = rob$value$QM, QMdf = unname(rob$value$QMdf), QMp = rob$value$QMp
    ),
    robust_predict = c(list(call = rpr_call), pred_fields(run_collecting_warnings(rpr_call, env)$value))
  )
}

ml_case <- function(ds, test, mods = NULL, x_new = NULL, note = NULL, extra = NULL, ctrl = CTRL) {
  info <- DATASETS[[ds]]
  setup <- sprintf(info$setup, info$path)
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  args <- c("yi", "vi", if (!is.null(mods)) sprintf("mods=%s", mods),
            sprintf("random=~1|%s/%s", info$outer, info$inner), "data=dat", 'method="REML"',
            sprintf('test="%s"', test), extra, if (nzchar(ctrl)) ctrl)
  call <- sprintf("rma.mv(%s)", paste(args, collapse = ", "))
  fitted <- tryCatch(run_collecting_warnings(call, env), error = function(e) e)
  if (inherits(fitted, "error") && nzchar(ctrl)) {
    # nlminb sometimes reports failure at rel.tol = 1e-12 although it sits at the optimum; its default
    # rel.tol (1e-10) then gives the same optimum to about 1e-8, which is recorded in the note.
    note <- paste(c(note, sprintf("%s failed (%s); refitted with nlminb's default rel.tol = 1e-10", ctrl,
                                  conditionMessage(fitted))), collapse = "; ")
    return(ml_case(ds, test, mods, x_new, note, extra, ctrl = ""))
  }
  res <- fitted$value
  env$res <- res
  pr_call <- if (is.null(x_new)) "predict(res)" else sprintf("predict(res, newmods=%s)", deparse(x_new[-1]))
  case <- list(
    dataset = ds, data = info$path, setup = setup, call = call, cluster = info$outer,
    mods = mods, X_colnames = I(colnames(res$X)), x_new = if (is.null(x_new)) NULL else I(x_new),
    test = test, note = note, warnings = fitted$warnings
  )
  case <- c(case, ml_blocks(env, info, pr_call))
  # The same model with both variance components fixed at metafor's estimates: everything downstream
  # of sigma2 (GLS, tests, predict, I^2, CR2, Satterthwaite, HTZ, logLik) without the optimiser's error.
  fixed_call <- sprintf("rma.mv(%s)", paste(c(args[!grepl("^(control|sigma2)=", args)],
                                              sprintf("sigma2=c(%s)", paste(sprintf("%.17g", res$sigma2), collapse = ", "))),
                                            collapse = ", "))
  env$res <- run_collecting_warnings(fixed_call, env)$value
  case$at_estimate <- c(list(call = fixed_call), ml_blocks(env, info, pr_call))
  case[!vapply(case, is.null, logical(1))]
}

cases <- list()
for (ds in setdiff(names(DATASETS), "within_zero")) for (test in c("z", "t")) {
  cases[[sprintf("three_level/%s/%s", ds, test)]] <- ml_case(ds, test)
}
# The boundary case: the REML optimum has sigma2_within = 0. nlminb works on log(sigma2) and stops short of
# the boundary (and reports failure with rel.tol = 1e-12), so the exact optimum is computed by fixing
# sigma2_within at 0 (`sigma2=c(NA, 0)`, a one-dimensional REML problem it solves to rel.tol = 1e-12);
# the free fit with metafor's default control is stored as well to show where the optimiser stops.
for (test in c("z", "t")) {
  cases[[sprintf("boundary/within_zero/%s", test)]] <- ml_case(
    "within_zero", test, extra = "sigma2=c(NA, 0)",
    note = "exact boundary optimum: sigma2_within fixed at 0, the value the free REML maximisation must reach")
  cases[[sprintf("boundary_free/within_zero/%s", test)]] <- ml_case(
    "within_zero", test, ctrl = "",
    note = "free fit with metafor's default control: nlminb on log(sigma2) stops near, not at, sigma2_within = 0")
}

# ---- meta-regression with one moderator ------------------------------------------------------------
MODS <- list(
  konstantopoulos2011 = list(mods = "~ year", x_new = c(1, 1990)),
  crede2010 = list(mods = "~ criterion", x_new = c(1, 1)),
  alliance_synthetic = list(mods = "~ rater", x_new = c(1, 0, 1))
)
for (ds in intersect(names(MODS), names(DATASETS))) for (test in c("z", "t")) {
  m <- MODS[[ds]]
  cases[[sprintf("metareg/%s/%s/%s", ds, gsub("[ ~]", "", m$mods), test)]] <- ml_case(ds, test, m$mods, m$x_new)
}

# ---- aggregate() -----------------------------------------------------------------------------------
AGG <- list(crede2010 = "studyid", konstantopoulos2011 = "district", within_zero = "study")
if (!is.null(DATASETS$alliance_synthetic)) AGG$alliance_synthetic <- "study_id"
for (ds in names(AGG)) for (rho in c(0.5, 0.8)) {
  info <- DATASETS[[ds]]
  setup <- sprintf(info$setup, info$path)
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  prep <- "if (!inherits(dat, \"escalc\")) dat <- escalc(yi=yi, vi=vi, data=dat)"
  eval(parse(text = prep), envir = env)
  call <- sprintf('aggregate(dat, cluster=%s, rho=%s, struct="CS")', AGG[[ds]], rho)
  agg <- run_collecting_warnings(call, env)$value
  cases[[sprintf("aggregate/%s/rho%s", ds, rho)]] <- list(
    dataset = ds, data = info$path, setup = paste(setup, prep, sep = "; "), call = call, cluster = AGG[[ds]],
    rho = rho, clusters = I(as.character(agg[[AGG[[ds]]]])), yi = as.numeric(agg$yi), vi = as.numeric(agg$vi)
  )
}

write_ref("multilevel", cases, extra_pkgs = "clubSandwich")
