# Reference values for location-scale models (alliancemeta.studies.location_scale):
#   rma(yi, vi, mods = X, scale = ~ mod, method = "REML" or "ML") with its location and scale coefficients,
#   standard errors, z tests and intervals, QM and QS, logLik, fitted tau2, and
#   anova(fit, rma(yi, vi, mods = X, scale = ~ 1)) (the likelihood-ratio test of the scale moderators),
# on data/raw/molloy2014.csv, data/raw/alliance_synthetic.csv (SYNTHETIC) and metadat::dat.bangertdrowns2004
# (48 SMDs of writing-to-learn interventions; not used elsewhere in the project).
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/location_scale.json
# and the data it fitted to tests/reference/data/bangertdrowns2004.csv.
#
# Factor levels are sorted in the C locale (the package's treatment coding: first level in code-point order
# is the reference). metafor maximises the likelihood with nlminb (rel.tol 1e-12; its default 1e-10 where
# that reports failure, noted) and takes the covariance of the scale coefficients from numDeriv::hessian of
# its own objective `.ll.rma.ls`. nlminb stops up to ~1e-7 (relative) short of the maximum, so each case also
# stores `polished`: Newton steps to the zero of the numDeriv gradient of metafor's `.ll.rma.ls` (unscaled Z)
# from nlminb's alpha; at that alpha, metafor's fit with alpha fixed (`rma(..., alpha = a)`) supplies b, se,
# tau2 and logLik; the covariance of alpha is stored from the exact observed information (dense matrices,
# `va`) and as rma.uni computes it (numDeriv::hessian with its hessianCtrl r = 8, `va_numderiv`), which
# differs from the exact value by a few 1e-6 (relative) through the numerical differentiation. Moderators for which the maximum lies at tau2 -> 0 in some level are
# recorded as metafor fits them (`vanishing = TRUE`: min tau2/vi < 1e-6) and not polished.

Sys.setlocale("LC_COLLATE", "C")
CTRL <- "control=list(rel.tol=1e-12, iter.max=10000, eval.max=10000)"
DATA_DIR <- file.path("tests", "reference", "data")

bd <- metadat::dat.bangertdrowns2004
bd <- data.frame(id = bd$id, author = bd$author, year = bd$year, grade = bd$grade, length = bd$length, wic = bd$wic,
                 feedback = bd$feedback, meta = bd$meta, ni = bd$ni, yi = as.numeric(bd$yi), vi = as.numeric(bd$vi))
write_csv17(bd, file.path(DATA_DIR, "bangertdrowns2004.csv"))

DATASETS <- list(
  molloy2014 = list(path = "data/raw/molloy2014.csv",
                    setup = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\"))",
                    moderators = c("meanage", "quality", "a_measure", "design", "controls")),
  bangertdrowns2004 = list(path = file.path(DATA_DIR, "bangertdrowns2004.csv"), setup = "dat <- read.csv(\"%s\")",
                           moderators = c("grade", "length", "meta", "feedback", "wic"))
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  DATASETS$alliance_synthetic <- list(
    path = "data/raw/alliance_synthetic.csv",
    setup = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\"))",
    moderators = c("rater", "measure", "timing", "treatment", "format", "population", "year"))
} else {
  message("refs_location_scale.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

# The observed information of alpha written out with dense matrices (the chain rule through
# tau2_i = exp(z_i'alpha) of d2 ll / dtau2_i dtau2_j = -u_i u_j P_ij + D_ij / 2, u = Py, D = P o P for REML and
# diag(w^2) for ML; first derivatives (u_i^2 - c_i) / 2 with c = diag(P) or w).
dense_observed <- function(alpha, yi, vi, X, Z, reml) {
  t2 <- exp(c(Z %*% alpha))
  w <- 1 / (vi + t2)
  W <- diag(w)
  P <- W - W %*% X %*% solve(crossprod(X, W %*% X), crossprod(X, W))
  u <- c(P %*% yi)
  g <- 0.5 * (u^2 - if (reml) diag(P) else w)
  D <- if (reml) P * P else diag(w^2)
  Ht <- -outer(u, u) * P + 0.5 * D
  -(crossprod(Z * t2, Ht %*% (Z * t2)) + crossprod(Z, Z * (g * t2)))
}

# Newton steps from nlminb's estimate to the maximum of metafor's own objective: numDeriv gradient of
# `.ll.rma.ls` (the fixed point, independent of the formula above), dense observed information as the step
# matrix. Then the covariance of alpha twice: from the exact observed information, and as rma.uni computes
# it (numDeriv::hessian with hessianCtrl r = 8), whose Richardson extrapolation is accurate to a few 1e-6.
polish_alpha <- function(res) {
  reml <- res$method == "REML"
  f <- function(a) metafor:::.ll.rma.ls(a, yi = c(res$yi), vi = res$vi, X = res$X, Z = res$Z,
                                        reml = reml, k = res$k, pX = res$p,
                                        alpha.val = rep(NA, res$q), beta.val = NULL, verbose = FALSE,
                                        digits = res$digits, REMLf = TRUE, link = "log", mZ = NULL,
                                        alpha.min = rep(-Inf, res$q), alpha.max = rep(Inf, res$q),
                                        alpha.transf = FALSE, tau2.min = 0, tau2.max = Inf, optbeta = FALSE)
  a <- c(res$alpha)
  iter <- 0
  repeat {
    iter <- iter + 1
    # f is minus the log-likelihood: Newton step -H^{-1} grad f with H = observed information
    step <- -solve(dense_observed(a, c(res$yi), res$vi, res$X, res$Z, reml), numDeriv::grad(f, a))
    a <- a + step
    if (max(abs(res$Z %*% step)) < 1e-11 || iter >= 20) break
  }
  H_num <- numDeriv::hessian(f, a, method.args = list(r = 8))
  list(alpha = a, iterations = iter, gradient = numDeriv::grad(f, a),
       va = chol2inv(chol(dense_observed(a, c(res$yi), res$vi, res$X, res$Z, reml))),
       va_numderiv = chol2inv(chol(H_num)), objective = f(a))
}

fit_fields <- function(res) list(
  b = unname(c(res$b)), se = unname(res$se), zval = unname(res$zval), pval = unname(res$pval),
  ci.lb = unname(res$ci.lb), ci.ub = unname(res$ci.ub), vb = unname(res$vb),
  alpha = unname(c(res$alpha)), se.alpha = unname(res$se.alpha), zval.alpha = unname(res$zval.alpha),
  pval.alpha = unname(res$pval.alpha), ci.lb.alpha = unname(res$ci.lb.alpha), ci.ub.alpha = unname(res$ci.ub.alpha),
  va = unname(res$va), QM = res$QM, QMdf = res$QMdf, QMp = res$QMp, QS = res$QS, QSdf = res$QSdf, QSp = res$QSp,
  logLik = as.numeric(logLik(res)), tau2 = res$tau2, k = res$k, p = res$p, q = res$q
)

ls_case <- function(ds, scale, mods = NULL, method = "REML", test = "z", note = NULL, ctrl = CTRL) {
  info <- DATASETS[[ds]]
  # the rows with every moderator observed, so that the reduced model (anova) uses the same data
  vars <- unique(all.vars(as.formula(paste(c(scale, if (!is.null(mods)) sub("~", "+", mods)), collapse = " "))))
  setup <- paste0(sprintf(info$setup, info$path), sprintf("; dat <- dat[complete.cases(dat[, c(%s)]), , drop=FALSE]",
                                                          paste(sprintf("\"%s\"", vars), collapse = ", ")))
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  base <- c("yi", "vi", if (!is.null(mods)) sprintf("mods=%s", mods), "data=dat", sprintf('method="%s"', method),
            sprintf('test="%s"', test))
  call <- sprintf("rma(%s)", paste(c(base, sprintf("scale=%s", scale), if (nzchar(ctrl)) ctrl), collapse = ", "))
  fitted <- tryCatch(run_collecting_warnings(call, env), error = function(e) e)
  if (inherits(fitted, "error") && nzchar(ctrl)) {
    note <- paste(c(note, sprintf("%s failed (%s); refitted with nlminb's default rel.tol = 1e-10", ctrl,
                                  conditionMessage(fitted))), collapse = "; ")
    return(ls_case(ds, scale, mods, method, test, note, ctrl = ""))
  }
  res <- fitted$value
  env$res <- res
  red_call <- sprintf("rma(%s)", paste(c(base, "scale=~1", CTRL), collapse = ", "))
  red <- tryCatch(run_collecting_warnings(red_call, env), error = function(e) e)
  if (inherits(red, "error")) {
    red_call <- sprintf("rma(%s)", paste(c(base, "scale=~1"), collapse = ", "))
    red <- run_collecting_warnings(red_call, env)
  }
  env$red <- red$value
  anova_call <- "anova(res, red)"
  av <- run_collecting_warnings(anova_call, env)
  uni_call <- sprintf("rma(%s)", paste(c(base, "control=list(threshold=1e-12, maxiter=10000)"), collapse = ", "))
  uni <- run_collecting_warnings(uni_call, env)$value
  vanishing <- min(res$tau2 / res$vi) < 1e-6
  case <- list(
    dataset = ds, data = info$path, setup = setup, call = call, scale = scale, mods = mods, method = method,
    test = test, note = note, warnings = fitted$warnings, Z_colnames = I(colnames(res$Z)),
    X_colnames = I(colnames(res$X)), n_rows = nrow(env$dat),
    vanishing = vanishing, fit = fit_fields(res),
    reduced = list(call = red_call, alpha = unname(c(env$red$alpha)), logLik = as.numeric(logLik(env$red))),
    anova = list(call = anova_call, LRT = av$value$LRT, pval = av$value$pval, df = av$value$parms.f - av$value$parms.r,
                 warnings = av$warnings),
    homogeneous = list(call = uni_call, tau2 = uni$tau2, logLik = as.numeric(logLik(uni)))
  )
  if (!vanishing) {
    pol <- polish_alpha(res)
    fixed_call <- sprintf("rma(%s)", paste(c(base, sprintf("scale=%s", scale),
                                             sprintf("alpha=c(%s)", paste(sprintf("%.17g", pol$alpha), collapse = ", "))),
                                           collapse = ", "))
    fx <- run_collecting_warnings(fixed_call, env)$value
    case$polished <- list(
      call = fixed_call, newton_iterations = pol$iterations, gradient = pol$gradient,
      alpha = pol$alpha, va = pol$va, se.alpha = sqrt(diag(pol$va)),
      va_numderiv = pol$va_numderiv, se.alpha_numderiv = sqrt(diag(pol$va_numderiv)),
      b = unname(c(fx$b)), se = unname(fx$se), zval = unname(fx$zval), pval = unname(fx$pval),
      ci.lb = unname(fx$ci.lb), ci.ub = unname(fx$ci.ub), tau2 = fx$tau2, logLik = as.numeric(logLik(fx)),
      objective = pol$objective
    )
  }
  case[!vapply(case, is.null, logical(1))]
}

cases <- list()
for (ds in names(DATASETS)) for (mod in DATASETS[[ds]]$moderators) {
  cases[[sprintf("ls/%s/%s", ds, mod)]] <- ls_case(ds, sprintf("~ %s", mod))
}
# location moderators as well, ML estimation and t tests
cases[["ls_mods/bangertdrowns2004/meta/length"]] <- ls_case("bangertdrowns2004", "~ length", mods = "~ meta")
cases[["ls_ml/molloy2014/meanage"]] <- ls_case("molloy2014", "~ meanage", method = "ML")
cases[["ls_t/bangertdrowns2004/grade"]] <- ls_case("bangertdrowns2004", "~ grade", test = "t")
if (!is.null(DATASETS$alliance_synthetic)) {
  cases[["ls_mods/alliance_synthetic/rater/format"]] <- ls_case("alliance_synthetic", "~ format", mods = "~ rater")
}

write_ref("location_scale", cases, extra_pkgs = "numDeriv")
