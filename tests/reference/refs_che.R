# Reference values for the CHE working model (alliancemeta.studies.multilevel.che):
#   V <- vcalc(vi, cluster = study, obs = es, rho = rho)
#   rma.mv(yi, V, random = ~ 1 | study/es, method = "REML", test = "z" / "t"), predict(),
#   robust(fit, cluster = study, clubSandwich = TRUE) (CR2 + Satterthwaite df, HTZ Wald test) and its predict(),
# for rho = 0.2, 0.5, 0.8 on metadat::dat.assink2016 (100 SMDs in 17 studies) and data/raw/alliance_synthetic.csv
# (escalc("ZCOR"); SYNTHETIC), one meta-regression per dataset, and vcalc's matrix for the first studies.
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/che.json and the
# data it fitted to tests/reference/data/assink2016.csv.
#
# rma.mv maximises the REML likelihood with nlminb on numerical derivatives; CTRL tightens its relative
# tolerance to 1e-12 (when nlminb then reports failure, its default 1e-10 is used and noted). On these data
# nlminb stops up to ~2e-6 (relative) short of the optimum in sigma2, so every case also stores
#   `at_estimate`: everything downstream of sigma2 with both components fixed at metafor's estimates
#                  (rma.mv(..., sigma2 = c(...))), free of optimiser error, and
#   `polished`:    the same at the exact REML optimum, found by Newton steps (numDeriv gradient and Hessian)
#                  on the restricted log-likelihood written out with dense matrices below, started from
#                  nlminb's estimate; `polished$check` shows that this log-likelihood equals metafor's logLik
#                  at both points and that metafor's own logLik is higher at the polished point. A
#                  component that nlminb leaves below 1e-7 of the other is put on the boundary 0 and
#                  its one-sided derivative there is recorded (it must be <= 0 at a boundary maximum).

suppressPackageStartupMessages(library(clubSandwich))

CTRL <- "control=list(rel.tol=1e-12, iter.max=10000, eval.max=10000)"
DATA_DIR <- file.path("tests", "reference", "data")
RHOS <- c(0.2, 0.5, 0.8)

# 17 significant digits where 15 do not round-trip, so Python reads back exactly the doubles R fitted.
# ---- data ------------------------------------------------------------------------------------------
# Assink & Wibbelink (2016): 100 standardised mean differences (delinquency) in 17 studies, 1 to 22 each.
assink <- metadat::dat.assink2016[, c("study", "esid", "yi", "vi", "year", "deltype")]
write_csv17(assink, file.path(DATA_DIR, "assink2016.csv"))

DATASETS <- list(
  assink2016 = list(path = file.path(DATA_DIR, "assink2016.csv"), setup = "dat <- read.csv(\"%s\")",
                    outer = "study", inner = "esid")
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  DATASETS$alliance_synthetic <- list(
    path = "data/raw/alliance_synthetic.csv",
    setup = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\")); dat$es <- seq_len(nrow(dat))",
    outer = "study_id", inner = "es")
} else {
  message("refs_che.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

pred_fields <- function(pr) {
  pick <- function(name) if (is.null(pr[[name]])) NA_real_ else unname(c(pr[[name]]))
  list(pred = pick("pred"), se = pick("se"), ci.lb = pick("ci.lb"), ci.ub = pick("ci.ub"),
       pi.lb = pick("pi.lb"), pi.ub = pick("pi.ub"))
}

# fit, predict, robust(clubSandwich = TRUE) and its predict for the model `res` in `env`.
che_blocks <- function(env, info, pr_call) {
  res <- env$res
  rob_call <- sprintf("robust(res, cluster=dat$%s, clubSandwich=TRUE)", info$outer)
  rob <- run_collecting_warnings(rob_call, env)
  env$rob <- rob$value
  rpr_call <- sub("predict(res", "predict(rob", pr_call, fixed = TRUE)
  list(
    fit = list(
      sigma2 = res$sigma2, b = unname(c(res$b)), se = unname(res$se), zval = unname(res$zval),
      pval = unname(res$pval), ci.lb = unname(res$ci.lb), ci.ub = unname(res$ci.ub), vb = unname(res$vb),
      QE = res$QE, QEp = res$QEp, QM = res$QM, QMdf = res$QMdf, QMp = res$QMp,
      logLik = as.numeric(logLik(res)), k = res$k, p = res$p, ddf = unname(res$ddf),
      n_clusters = res$s.nlevels[1]
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

# The restricted log-likelihood of rma.mv (REMLf = TRUE form), from dense k x k matrices.
reml_loglik_dense <- function(s2, y, V, X, Z) {
  k <- length(y); p <- NCOL(X)
  M <- V + s2[1] * tcrossprod(Z) + s2[2] * diag(k)
  R <- chol(M)
  Mi <- chol2inv(R)
  XMX <- crossprod(X, Mi %*% X)
  b <- solve(XMX, crossprod(X, Mi %*% y))
  e <- y - X %*% b
  c(-0.5 * (k - p) * log(2 * pi) + 0.5 * determinant(crossprod(X))$modulus - sum(log(diag(R))) -
      0.5 * determinant(XMX)$modulus - 0.5 * crossprod(e, Mi %*% e))
}

# Newton steps from nlminb's estimate to the REML optimum (see the header).
polish_sigma2 <- function(s2, y, V, X, Z) {
  f_all <- function(s) reml_loglik_dense(s, y, V, X, Z)
  free <- s2 > 1e-7 * max(s2)
  s <- ifelse(free, s2, 0)
  f <- function(x) f_all(replace(s, free, x))
  iter <- 0
  repeat {
    iter <- iter + 1
    g <- numDeriv::grad(f, s[free])
    H <- numDeriv::hessian(f, s[free])
    step <- -solve(H, g)
    s[free] <- s[free] + step
    # numDeriv is accurate to about 1e-10 here: stop once the steps are at that noise level
    if (max(abs(step) / s[free]) < 1e-10 || iter >= 20) break
  }
  boundary_grad <- if (all(free)) NULL else
    vapply(which(!free), function(i) numDeriv::grad(function(x) f_all(replace(s, i, x)), 0, method = "simple",
                                                     method.args = list(eps = 1e-10 * max(s))), numeric(1))
  list(sigma2 = s, iterations = iter, gradient = numDeriv::grad(f, s[free]), boundary_grad = boundary_grad)
}

che_case <- function(ds, rho, test, mods = NULL, x_new = NULL, note = NULL, ctrl = CTRL) {
  info <- DATASETS[[ds]]
  setup <- sprintf(info$setup, info$path)
  vcalc_call <- sprintf("V <- vcalc(vi, cluster=%s, obs=%s, rho=%s, data=dat)", info$outer, info$inner, rho)
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  eval(parse(text = vcalc_call), envir = env)
  args <- c("yi", "V", if (!is.null(mods)) sprintf("mods=%s", mods),
            sprintf("random=~1|%s/%s", info$outer, info$inner), "data=dat", 'method="REML"',
            sprintf('test="%s"', test), if (nzchar(ctrl)) ctrl)
  call <- sprintf("rma.mv(%s)", paste(args, collapse = ", "))
  fitted <- tryCatch(run_collecting_warnings(call, env), error = function(e) e)
  if (inherits(fitted, "error") && nzchar(ctrl)) {
    note <- paste(c(note, sprintf("%s failed (%s); refitted with nlminb's default rel.tol = 1e-10", ctrl,
                                  conditionMessage(fitted))), collapse = "; ")
    return(che_case(ds, rho, test, mods, x_new, note, ctrl = ""))
  }
  res <- fitted$value
  env$res <- res
  pr_call <- if (is.null(x_new)) "predict(res)" else sprintf("predict(res, newmods=%s)", deparse(x_new[-1]))
  case <- list(
    dataset = ds, data = info$path, setup = setup, vcalc = vcalc_call, call = call, cluster = info$outer,
    rho = rho, mods = mods, X_colnames = I(colnames(res$X)), x_new = if (is.null(x_new)) NULL else I(x_new),
    test = test, note = note, warnings = fitted$warnings
  )
  case <- c(case, che_blocks(env, info, pr_call))
  fixed_call <- sprintf("rma.mv(%s)", paste(c(args[!grepl("^control=", args)],
                                              sprintf("sigma2=c(%s)", paste(sprintf("%.17g", res$sigma2), collapse = ", "))),
                                            collapse = ", "))
  env$res <- run_collecting_warnings(fixed_call, env)$value
  case$at_estimate <- c(list(call = fixed_call), che_blocks(env, info, pr_call))
  ll_metafor <- as.numeric(logLik(env$res))

  # the exact optimum: Newton steps on the dense restricted log-likelihood
  Z <- model.matrix(~ 0 + factor(env$dat[[info$outer]]))
  X <- res$X
  V <- as.matrix(env$V)
  pol <- polish_sigma2(res$sigma2, c(res$yi), V, X, Z)
  pol_call <- sprintf("rma.mv(%s)", paste(c(args[!grepl("^control=", args)],
                                            sprintf("sigma2=c(%s)", paste(sprintf("%.17g", pol$sigma2), collapse = ", "))),
                                          collapse = ", "))
  env$res <- run_collecting_warnings(pol_call, env)$value
  case$polished <- c(list(call = pol_call), che_blocks(env, info, pr_call))
  case$polished$check <- list(
    newton_iterations = pol$iterations, gradient = pol$gradient, boundary_grad = pol$boundary_grad,
    dense_loglik_at_metafor = reml_loglik_dense(res$sigma2, c(res$yi), V, X, Z), metafor_loglik_at_metafor = ll_metafor,
    dense_loglik_at_polished = reml_loglik_dense(pol$sigma2, c(res$yi), V, X, Z),
    metafor_loglik_at_polished = as.numeric(logLik(env$res))
  )
  case[!vapply(case, is.null, logical(1))]
}

cases <- list()
for (ds in names(DATASETS)) for (rho in RHOS) for (test in c("z", "t")) {
  cases[[sprintf("che/%s/rho%s/%s", ds, rho, test)]] <- che_case(ds, rho, test)
}

# ---- meta-regression -------------------------------------------------------------------------------
MODS <- list(
  assink2016 = list(mods = "~ deltype", x_new = c(1, 0, 1), rho = 0.6),
  alliance_synthetic = list(mods = "~ rater", x_new = c(1, 0, 1), rho = 0.5)
)
for (ds in intersect(names(MODS), names(DATASETS))) for (test in c("z", "t")) {
  m <- MODS[[ds]]
  cases[[sprintf("metareg/%s/%s/rho%s/%s", ds, gsub("[ ~]", "", m$mods), m$rho, test)]] <-
    che_case(ds, m$rho, test, m$mods, m$x_new)
}

# ---- vcalc's matrix ----------------------------------------------------------------------------------
# The first 16 rows of assink2016 (studies 1-4, blocks of 6, 3, 1 and 6 effects) for rho = 0.5.
env <- new.env(parent = globalenv())
eval(parse(text = sprintf(DATASETS$assink2016$setup, DATASETS$assink2016$path)), envir = env)
vc_call <- "as.matrix(vcalc(vi, cluster=study, obs=esid, rho=0.5, data=dat))[1:16, 1:16]"
cases[["vcalc/assink2016/rho0.5"]] <- list(
  dataset = "assink2016", data = DATASETS$assink2016$path, setup = sprintf(DATASETS$assink2016$setup, DATASETS$assink2016$path),
  call = vc_call, rows = I(1:16), rho = 0.5, cluster = "study", V = unname(eval(parse(text = vc_call), envir = env))
)

write_ref("che", cases, extra_pkgs = "clubSandwich")
