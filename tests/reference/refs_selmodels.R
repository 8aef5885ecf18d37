# Reference values for the selection models (alliancemeta.studies.bias.selmodels): metafor::selmodel() with every
# weight function SPEC §5 selection_models.csv lists -- stepfun (steps .025 and .025/.5), beta, halfnorm, negexp,
# logistic, power -- fitted to an ML random-effects model, on
#   - molloy2014 (data/raw, ZCOR, k = 16),
#   - alliance_synthetic (data/raw, ZCOR, k = 401, SYNTHETIC; skipped when the file is absent),
#   - mcdaniel1994 (metadat::dat.mcdaniel1994, ZCOR, k = 160),
#   - hackshaw1998 (metadat::dat.hackshaw1998, log odds ratios as stored, k = 37),
#   - bangertdrowns2004 (metadat::dat.bangertdrowns2004, SMDs as stored, k = 48).
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/selmodels.json.
# About an hour on an idle core (the accurate integrals below are slow in R for k = 401 and k = 160).
#
# Why the values are refined: selmodel() optimises with optim(BFGS) (default) or nlminb and finite differences,
# stopping 1e-5 to 1e-8 (relative) short of the maximum, and for the continuous weight functions it integrates
# each study's normalising constant A_i with integrate(-Inf, Inf) at rel.tol = 1.2e-4 (intCtrl default). The beta
# and power weights clip the p-value at 1e-5, which puts kinks into the integrand, and integrate() over the whole
# line then misses its tolerance: on alliance_synthetic (beta) the log-likelihood is off by 4e-6 at rel.tol 1e-10
# and by 9e-8 at 1e-12, against piecewise integration (stored under integration_check). So each fit is refined by
# Newton steps (numDeriv gradient and Hessian in standardised coordinates, see refine()) on
# metafor's own likelihood -- .selmodel.ll.stepfun for the step function (closed form), and for the continuous
# weights the same formula as .selmodel.ll.cont with metafor's integrand (.selmodel.int, the model's wi.fun and
# pval.min) integrated over [-L sei, L sei] at rel.tol 1e-12, with L = qnorm(pval.min, lower.tail = FALSE) where the
# p-value is clipped (beta, power) and L = 8.5 otherwise; beyond +-L sei the weight is constant (clipped p-value) or
# equal to its limit to double precision (1 - pnorm(8.5) = 9.5e-18), so the two tails are wi.fun at the limiting
# p-value times a normal tail probability.
# A parameter whose refined value leaves its bound (delta below delta.min, tau2 below 0) is held at the bound and
# the others are refined again (`at_bound`); standard errors then come from the Hessian of the free parameters.
# metafor's own fits are kept under `metafor_nlminb` (control=list(optimizer="nlminb")) and `metafor_default`.

suppressPackageStartupMessages({
  library(metadat)
  library(numDeriv)
})

CTRL <- "control=list(threshold=1e-12, tol=1e-12)"
INT_RTOL <- 1e-12

SETUPS <- list(
  molloy2014 = 'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/molloy2014.csv"))',
  mcdaniel1994 = 'dat <- escalc("ZCOR", ri=ri, ni=ni, data=dat.mcdaniel1994)',
  hackshaw1998 = "dat <- dat.hackshaw1998",
  bangertdrowns2004 = "dat <- dat.bangertdrowns2004"
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  SETUPS$alliance_synthetic <- 'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/alliance_synthetic.csv"))'
} else {
  message("refs_selmodels.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

TYPES <- list(
  stepfun_3psm = 'type="stepfun", steps=0.025',
  stepfun_4psm = 'type="stepfun", steps=c(0.025, 0.5)',
  beta = 'type="beta"',
  halfnorm = 'type="halfnorm"',
  negexp = 'type="negexp"',
  logistic = 'type="logistic"',
  power = 'type="power"'
)

# metafor's log-likelihood in the natural parameters (beta, tau2, delta) of a fitted selmodel object `sm`.
selmodel_negll <- function(sm) {
  k <- sm$k
  p <- sm$p
  nd <- sm$deltas
  yi <- c(sm$yi)
  vi <- sm$vi
  X <- sm$X
  if (sm$type == "stepfun") {
    return(function(par) {  # par = (beta, tau2, delta_2..delta_N); delta_1 = 1 is inserted
      metafor:::.selmodel.ll.stepfun(
        par = c(par[seq_len(p + 1)], 1, par[-seq_len(p + 1)]), yi = yi, vi = vi, X = X, preci = rep(1, k), k = k, pX = p, pvals = sm$pvals, deltas = nd,
        delta.val = c(1, rep(NA, nd - 1)), delta.transf = FALSE, mapfun = rep(NA, nd), delta.min = sm$delta.min,
        delta.max = sm$delta.max, tau2.val = NA, tau2.transf = FALSE, tau2.max = Inf, beta.val = rep(NA, p),
        wi.fun = sm$wi.fun, steps = sm$steps, pgrp = sm$pgrp, alternative = sm$alternative,
        pval.min = sm$pval.min, intCtrl = list(), verbose = FALSE, digits = sm$digits
      )
    })
  }
  L <- if (sm$pval.min > 0) qnorm(sm$pval.min, lower.tail = FALSE) else 8.5
  p_hi <- sm$pval.min       # the p-value beyond +L sei (clipped, or its limit 0)
  p_lo <- 1 - sm$pval.min   # and beyond -L sei
  sei <- sqrt(vi)
  function(par) {
    beta <- par[seq_len(p)]
    tau2 <- par[p + 1]
    delta <- par[p + 1 + seq_len(nd)]
    yhat <- c(X %*% beta)
    s <- sqrt(vi + tau2)
    middle <- vapply(seq_len(k), function(i) {
      integrate(metafor:::.selmodel.int, -L * sei[i], L * sei[i], yi = yi[i], vi = vi[i], preci = 1, yhat = yhat[i],
                wi.fun = sm$wi.fun, delta = delta, tau2 = tau2, alternative = sm$alternative,
                pval.min = sm$pval.min, steps = sm$steps, rel.tol = INT_RTOL, subdivisions = 1000L)$value
    }, numeric(1))
    w_hi <- sm$wi.fun(p_hi, delta, yi, vi, 1, sm$alternative, sm$steps)
    w_lo <- sm$wi.fun(p_lo, delta, yi, vi, 1, sm$alternative, sm$steps)
    Ai <- middle + w_hi * pnorm(L * sei, yhat, s, lower.tail = FALSE) + w_lo * pnorm(-L * sei, yhat, s)
    -sum(log(sm$wi.fun(sm$pvals, delta, yi, vi, 1, sm$alternative, sm$steps)) +
           dnorm(yi, yhat, s, log = TRUE) - log(Ai))
  }
}

# Newton refinement of x over the parameters not held at a bound; see the header. Derivatives are taken in
# standardised coordinates z = 1 + (x - x0) / sc, with sc metafor's standard errors (or those of a first Hessian),
# and steps of d = 0.05 (Richardson r = 4, so 0.05 down to 0.006 standard errors): parameters of very different size
# (beta ~ 0.1, tau2 ~ 0.005, a delta of 0.002) are then differenced alike, and far from the round-off in the
# log-likelihood. The Newton steps use a cheaper Hessian (r = 2) until they move less than 1e-9 standard errors; a
# last step uses the accurate one (r = 4), whose inverse gives the standard errors. The scaled gradient (|g| times
# the standard error) at the end is stored as evidence of convergence.
ND <- list(d = 0.05, r = 4)
ND2 <- list(d = 0.05, r = 2)  # for the Hessians that only steer Newton steps
refine <- function(f, x, lower, sc0 = NULL, max_steps = 10) {
  free <- rep(TRUE, length(x))
  for (attempt in seq_along(x)) {
    x0 <- x
    sc <- sc0[free]
    if (is.null(sc) || any(!is.finite(sc)) || any(sc <= 0)) {
      H0 <- numDeriv::hessian(function(z) { y <- x0; y[free] <- z; f(y) }, x0[free], method.args = list(r = 2))
      sc <- sqrt(abs(diag(solve(H0))))
    }
    fz <- function(z) { y <- x0; y[free] <- x0[free] + (z - 1) * sc; f(y) }
    z <- rep(1, sum(free))
    H <- numDeriv::hessian(fz, z, method.args = ND2)
    for (i in seq_len(max_steps)) {
      dz <- solve(H, numDeriv::grad(fz, z, method.args = ND))
      z <- z - dz
      if (max(abs(dz)) < 1e-9) break
    }
    x[free] <- x0[free] + (z - 1) * sc
    out <- free & (x < lower)
    if (!any(out)) break
    x[out] <- lower[out]
    free <- free & !out
    sc0 <- NULL
  }
  # a last Newton step with the accurate Hessian, which also gives the standard errors
  x0 <- x
  fz <- function(z) { y <- x0; y[free] <- x0[free] + (z - 1) * sc; f(y) }
  H <- numDeriv::hessian(fz, rep(1, sum(free)), method.args = ND)
  z <- 1 - solve(H, numDeriv::grad(fz, rep(1, sum(free)), method.args = ND))
  x[free] <- x0[free] + (z - 1) * sc
  g <- numDeriv::grad(fz, z, method.args = ND)
  vz <- solve(H)
  vcov <- matrix(NA_real_, length(x), length(x))
  vcov[free, free] <- diag(sc, nrow = length(sc)) %*% vz %*% diag(sc, nrow = length(sc))
  list(x = x, free = free, vcov = vcov, ll = -f(x), scaled_gradient = max(abs(g) * sqrt(diag(vz))),
       gradient_at_bound = if (all(free)) numeric() else {
         numDeriv::grad(function(z) { y <- x; y[!free] <- z; f(y) }, x[!free])
       })
}

raw_fields <- function(sm) {
  list(beta = unname(c(sm$beta)), se = unname(sm$se), tau2 = sm$tau2, se_tau2 = sm$se.tau2,
       delta = I(unname(sm$delta)), se_delta = I(unname(sm$se.delta)), ll = sm$ll, LRT = sm$LRT, LRTp = sm$LRTp)
}

run_case <- function(setup, type_args) {
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  model <- sprintf('res <- rma(yi, vi, data=dat, method="ML", %s)', CTRL)
  eval(parse(text = model), envir = env)
  res <- env$res
  call_nlminb <- sprintf('selmodel(res, %s, control=list(optimizer="nlminb"))', type_args)
  call_default <- sprintf("selmodel(res, %s)", type_args)
  out <- list(setup = setup, model = model, call = call_nlminb, ll0 = c(logLik(res, REML = FALSE)))
  fit <- tryCatch(run_collecting_warnings(call_nlminb, env), error = function(e) e)
  if (inherits(fit, "error")) {
    out$error <- conditionMessage(fit)
    return(out)
  }
  sm <- fit$value
  out$metafor_nlminb <- c(raw_fields(sm), list(warnings = fit$warnings))
  dflt <- tryCatch(run_collecting_warnings(call_default, env), error = function(e) e)
  out$metafor_default <- if (inherits(dflt, "error")) list(error = conditionMessage(dflt)) else
    c(list(call = call_default), raw_fields(dflt$value), list(warnings = dflt$warnings))
  f <- selmodel_negll(sm)
  p <- sm$p
  est <- if (sm$type == "stepfun") -1 else seq_len(sm$deltas)  # stepfun: delta_1 = 1 is fixed
  x0 <- c(c(sm$beta), sm$tau2, sm$delta[est])
  lower <- c(rep(-Inf, p), 0, sm$delta.min[est])
  sc0 <- c(unname(sm$se), sm$se.tau2, sm$se.delta[est])  # metafor's standard errors, when it has them
  rf <- refine(f, x0, lower, sc0 = if (length(sc0) == length(x0)) sc0 else NULL)
  x <- rf$x
  se <- sqrt(diag(rf$vcov))
  delta <- if (sm$type == "stepfun") c(1, x[-seq_len(p + 1)]) else x[-seq_len(p + 1)]
  se_delta <- if (sm$type == "stepfun") c(NA, se[-seq_len(p + 1)]) else se[-seq_len(p + 1)]
  crit <- qnorm(0.975)
  LRT <- max(0, -2 * (out$ll0 - rf$ll))
  names_x <- c("beta", "tau2", rep("delta", length(x) - p - 1))
  out$refined <- list(
    refined_by = "refine() in refs_selmodels.R", beta = x[1], se = se[1], zval = x[1] / se[1],
    pval = 2 * pnorm(abs(x[1] / se[1]), lower.tail = FALSE), ci_lb = x[1] - crit * se[1],
    ci_ub = x[1] + crit * se[1], tau2 = x[p + 1], se_tau2 = se[p + 1], delta = I(delta), se_delta = I(se_delta),
    ll = rf$ll, LRT = LRT, LRTdf = sm$LRTdf, LRTp = pchisq(LRT, df = sm$LRTdf, lower.tail = FALSE),
    at_bound = I(unique(names_x[!rf$free])), scaled_gradient = rf$scaled_gradient,
    gradient_at_bound = I(rf$gradient_at_bound), ll_at_metafor_nlminb = -f(x0)
  )
  if (sm$type != "stepfun") {
    # metafor's own integration (integrate over the whole line) at the refined optimum
    ll_metafor <- function(rtol, subdivisions) {
      -metafor:::.selmodel.ll.cont(
        par = x, yi = c(sm$yi), vi = sm$vi, X = sm$X, preci = rep(1, sm$k), k = sm$k, pX = p, pvals = sm$pvals,
        deltas = sm$deltas, delta.val = rep(NA, sm$deltas), delta.transf = FALSE, mapfun = rep(NA, sm$deltas),
        delta.min = sm$delta.min, delta.max = sm$delta.max, tau2.val = NA, tau2.transf = FALSE, tau2.max = Inf,
        beta.val = rep(NA, p), wi.fun = sm$wi.fun, steps = sm$steps, pgrp = sm$pgrp, alternative = sm$alternative,
        pval.min = sm$pval.min, intCtrl = list(lower = -Inf, upper = Inf, rel.tol = rtol, subdivisions = subdivisions),
        verbose = FALSE, digits = sm$digits
      )
    }
    out$integration_check <- list(
      ll_piecewise = rf$ll,
      ll_metafor_default_rel_tol = ll_metafor(.Machine$double.eps^0.25, 100L),
      ll_metafor_rel_tol_1e_10 = tryCatch(ll_metafor(1e-10, 1000L), error = function(e) NA_real_)
    )
  }
  out
}

only <- Sys.getenv("REFS_SELMODELS_ONLY")  # e.g. "molloy2014" while developing; empty = all datasets
if (nzchar(only)) SETUPS <- SETUPS[intersect(names(SETUPS), strsplit(only, ",")[[1]])]

# REFS_SELMODELS_CACHE (a directory) keeps each finished case, so an interrupted run resumes where it stopped.
cache_dir <- Sys.getenv("REFS_SELMODELS_CACHE")
cached_case <- function(key, make) {
  if (!nzchar(cache_dir)) return(make())
  path <- file.path(cache_dir, paste0(gsub("/", "__", key), ".rds"))
  if (file.exists(path)) return(readRDS(path))
  value <- make()
  dir.create(cache_dir, showWarnings = FALSE, recursive = TRUE)
  saveRDS(value, path)
  value
}

datasets <- list()
cases <- list()
for (name in names(SETUPS)) {
  env <- new.env(parent = globalenv())
  eval(parse(text = SETUPS[[name]]), envir = env)
  datasets[[name]] <- list(setup = SETUPS[[name]], yi = I(as.numeric(env$dat$yi)), vi = I(as.numeric(env$dat$vi)))
  for (type in names(TYPES)) {
    t0 <- proc.time()[["elapsed"]]
    key <- paste(name, type, sep = "/")
    cases[[key]] <- cached_case(key, function() c(list(dataset = name, type = type), run_case(SETUPS[[name]], TYPES[[type]])))
    message(sprintf("refs_selmodels.R: %s %s (%.0f s)", name, type, proc.time()[["elapsed"]] - t0))
  }
}

write_ref("selmodels", list(datasets = datasets, models = cases), extra_pkgs = "numDeriv")
