# Reference values for the multiverse engine (alliancemeta.studies.multiverse): single specifications of the
# SYNTHETIC alliance data (data/raw/alliance_synthetic.csv) built in R from metafor's own pieces, so that the
# engine's composition is checked end to end: subset -> dependence (none, aggregate(struct = "CS", rho = 0.5),
# rma.mv(random = ~ 1 | study_id/es)) -> outlier rule (rstudent / cooks.distance, once, then refit) -> rma /
# rma.mv with the estimator and test (robust(clubSandwich = TRUE) for "cr2").
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/multiverse.json.
#
# The outlier rules, as the module docstring of alliancemeta.studies.multiverse states them:
#   studentized: |rstudent(res)$z| > 1.96 (rma.uni units: effects, or studies after aggregation);
#                for rma.mv, the study's X2 of rstudent(res, cluster = study_id) (recomputed with cold-started
#                refits, see rstudent_cold): pchisq(X2, k, lower = FALSE) < 2 pnorm(-1.96)
#   cooks:       cooks.distance(res) > qchisq(0.5, 1) (rma.mv: cluster = study_id)
# The diagnostics come from the specification's own model, with the z test except for knha (rstudent depends on
# the Knapp-Hartung scale); for rma.mv from the REML fit with test "z" whatever the test of the row.
# About 10 minutes on a busy 2-core machine (rma.mv on k = 401 and leave-one-study-out refits on two subsets).

suppressPackageStartupMessages(library(clubSandwich))

CTRL_UNI <- "control=list(threshold=1e-12, tol=1e-12, maxiter=10000)"
CTRL_MV <- "control=list(rel.tol=1e-12, iter.max=10000, eval.max=10000)"
THRESHOLD <- 1.96
COOKS_Q <- 0.5
RHO <- 0.5
LEVEL <- 95

raw <- read.csv(file.path("data", "raw", "alliance_synthetic.csv"), stringsAsFactors = FALSE)
all_dat <- escalc("ZCOR", ri = r, ni = n, data = raw)
all_dat$es <- seq_len(nrow(all_dat))

subset_rows <- function(subset) {
  if (subset == "all") return(rep(TRUE, nrow(all_dat)))
  parts <- strsplit(subset, "=", fixed = TRUE)[[1]]
  all_dat[[parts[1]]] == parts[2]
}

fit_uni <- function(d, method, test) {
  eval(parse(text = sprintf("rma(yi, vi, data = d, method = \"%s\", test = \"%s\", level = %d, %s)",
                            method, test, LEVEL, CTRL_UNI)))
}
# nlminb at rel.tol 1e-12, or at its default 1e-10 where the tighter setting fails (as refs_multilevel.R does);
# the case records which (`mv_control`)
MV_CONTROL_USED <- character()
fit_mv <- function(d, test, control = CTRL_MV) {
  call <- function(ctrl) sprintf("rma.mv(yi, vi, random = ~ 1 | study_id/es, data = d, test = \"%s\", level = %d%s)",
                                 test, LEVEL, if (ctrl == "") "" else paste0(", ", ctrl))
  res <- tryCatch(eval(parse(text = call(control))), error = function(e) NULL)
  if (is.null(res)) {
    control <- ""
    res <- eval(parse(text = call(control)))
  }
  MV_CONTROL_USED <<- c(MV_CONTROL_USED, if (control == "") "default rel.tol 1e-10" else "rel.tol 1e-12")
  res
}

flags_uni <- function(d, method, test, rule) {
  res <- fit_uni(d, method, if (test == "knha") "knha" else "z")
  if (rule == "studentized") return(abs(rstudent(res)$z) > THRESHOLD)
  cooks.distance(res) > qchisq(COOKS_Q, 1)
}

# Studentized deleted residual of every study (rstudent.rma.mv with cluster = study_id, metafor's formula), with
# each deletion refitted from rma.mv's own (cold) starting values.  metafor's rstudent warm-starts every refit at
# the full-data sigma2 and can stay trapped at a worse local optimum: without study S191 of the rater=therapist
# subset it stops at logLik 28.27 (sigma2 = 0, 0.0155) while a cold start reaches the REML optimum 29.21 (sigma2 =
# 0.0162, 0), which the engine also finds; refs_influence_multilevel.R documents the same trap.  The X2 of the
# REML optimum is X2 = e'(D + sigma2_study 11' + X V X')^{-1} e with e = y_j - X_j b_(-j), D = diag(v_ij +
# sigma2_within) at the deleted fit's estimates (intercept-only here, so X V X' = V 11').
rstudent_cold <- function(d) {
  studies <- unique(d$study_id)
  out <- data.frame(study = studies, X2 = NA_real_, k = NA_integer_, metafor_X2 = NA_real_)
  res <- fit_mv(d, "z", control = "")
  warm <- rstudent(res, cluster = d$study_id)$cluster
  out$metafor_X2 <- warm$X2[match(studies, warm$slab)]
  for (j in seq_along(studies)) {
    u <- d$study_id == studies[j]
    fit <- rma.mv(yi, vi, random = ~ 1 | study_id/es, data = d[!u, ])
    e <- d$yi[u] - as.numeric(fit$b)
    V <- diag(d$vi[u] + fit$sigma2[2], nrow = sum(u)) + fit$sigma2[1] + as.numeric(fit$vb)
    out$X2[j] <- as.numeric(t(e) %*% solve(V, e))
    out$k[j] <- sum(u)
  }
  out
}

# study-level flags of the three-level model, one per study in order of first appearance
# (nlminb's default rel.tol = 1e-10: with tighter tolerances metafor's deletion refits fail, as in
# refs_influence_multilevel.R)
MV_TRAPPED <- character()
flags_mv <- function(d, rule) {
  studies <- unique(d$study_id)
  if (rule == "studentized") {
    rs <- rstudent_cold(d)
    trapped <- rs$study[abs(rs$X2 - rs$metafor_X2) > 1e-4 * pmax(1, rs$X2)]
    MV_TRAPPED <<- c(MV_TRAPPED, as.character(trapped))
    bad <- setNames(pchisq(rs$X2, rs$k, lower.tail = FALSE) < 2 * pnorm(-THRESHOLD), rs$study)
  } else {
    res <- fit_mv(d, "z", control = "")
    cd <- cooks.distance(res, cluster = d$study_id)
    bad <- cd > qchisq(COOKS_Q, 1)
  }
  if (is.null(names(bad)) || !setequal(names(bad), as.character(studies))) stop("diagnostics not labelled by study")
  out <- bad[as.character(studies)]
  out[is.na(out)] <- FALSE
  names(out) <- studies
  out
}

summarise_uni <- function(res, n_excluded) {
  list(k = res$k, estimate = as.numeric(res$b), se = res$se, ci_lb = res$ci.lb, ci_ub = res$ci.ub, pval = res$pval,
       tau2 = res$tau2, n_excluded = n_excluded, test_used = res$test)
}

spec_case <- function(estimator, test, dependence, outliers, subset) {
  d <- all_dat[subset_rows(subset), ]
  MV_CONTROL_USED <<- character()
  MV_TRAPPED <<- character()
  call <- sprintf("spec(%s, %s, %s, %s, %s)", estimator, test, dependence, outliers, subset)
  if (dependence %in% c("ignore", "aggregate")) {
    if (dependence == "aggregate") d <- aggregate(d, cluster = study_id, rho = RHO, struct = "CS")
    n_excluded <- 0
    if (outliers != "none") {
      bad <- flags_uni(d, estimator, test, outliers)
      n_excluded <- sum(bad)
      d <- d[!bad, ]
    }
    out <- summarise_uni(fit_uni(d, estimator, test), n_excluded)
  } else {
    n_excluded <- 0
    if (outliers != "none") {
      bad <- flags_mv(d, outliers)
      n_excluded <- sum(bad)
      d <- d[!(d$study_id %in% names(bad)[bad]), ]
    }
    res <- fit_mv(d, if (test == "cr2") "z" else test)
    if (test == "cr2") {
      rob <- robust(res, cluster = d$study_id, clubSandwich = TRUE)
      out <- list(k = res$k, estimate = as.numeric(rob$b), se = rob$se, ci_lb = rob$ci.lb, ci_ub = rob$ci.ub,
                  pval = rob$pval, tau2 = sum(res$sigma2), n_excluded = n_excluded, df = rob$ddf)
    } else {
      out <- list(k = res$k, estimate = as.numeric(res$b), se = res$se, ci_lb = res$ci.lb, ci_ub = res$ci.ub,
                  pval = res$pval, tau2 = sum(res$sigma2), n_excluded = n_excluded)
    }
  }
  out$r <- tanh(out$estimate)
  out$r_ci_lb <- tanh(out$ci_lb)
  out$r_ci_ub <- tanh(out$ci_ub)
  if (dependence == "three_level") {
    out$mv_control <- I(MV_CONTROL_USED)
    out$metafor_rstudent_trapped <- I(MV_TRAPPED)  # studies whose metafor (warm-start) X2 differs from the optimum's
  }
  c(list(call = call, spec = list(estimator = estimator, test = test, dependence = dependence, outliers = outliers,
                                   subset = subset)), out)
}

SPECS <- list(
  c("REML", "knha", "ignore", "none", "all"),
  c("REML", "knha", "ignore", "studentized", "all"),
  c("DL", "z", "ignore", "studentized", "all"),
  c("PM", "t", "ignore", "studentized", "rater=therapist"),
  c("SJ", "knha", "ignore", "studentized", "treatment=psychodynamic"),
  c("HE", "z", "ignore", "studentized", "format=internet"),
  c("HS", "knha", "ignore", "none", "format=internet"),
  c("ML", "z", "ignore", "cooks", "rater=client"),
  c("FE", "z", "ignore", "cooks", "all"),
  c("FE", "knha", "ignore", "studentized", "rater=observer"),
  c("REML", "knha", "aggregate", "none", "all"),
  c("REML", "z", "aggregate", "studentized", "all"),
  c("DL", "knha", "aggregate", "studentized", "treatment=CBT"),
  c("FE", "z", "aggregate", "cooks", "treatment=CBT"),
  c("PM", "t", "aggregate", "studentized", "rater=observer"),
  c("REML", "z", "three_level", "none", "all"),
  c("REML", "t", "three_level", "none", "all"),
  c("REML", "cr2", "three_level", "none", "all"),
  c("REML", "z", "three_level", "studentized", "format=internet"),
  c("REML", "cr2", "three_level", "studentized", "format=internet"),
  c("REML", "t", "three_level", "cooks", "format=internet"),
  c("REML", "z", "three_level", "studentized", "rater=therapist")
)

cases <- list()
for (s in SPECS) {
  name <- paste(s, collapse = "/")
  message("  ", name)
  cases[[name]] <- do.call(spec_case, as.list(s))
}
write_ref("multiverse", cases, extra_pkgs = "clubSandwich")
