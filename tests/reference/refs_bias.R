# Reference values for publication bias and influence (alliancemeta.studies.bias, alliancemeta.studies.influence):
#   regtest(model="rma", predictor="sei"), ranktest, trimfill (L0, R0), lm PET/PEESE,
#   selmodel(type="stepfun", steps=0.025), fsn(type="Rosenthal"), influence, leave1out,
#   cumul(order=year) and baujat, on
#   - molloy2014 (data/raw, ZCOR; trim and fill imputes on the left),
#   - crede2010 (metadat::dat.crede2010, ZCOR; trim and fill imputes on the RIGHT),
#   - molloy2014 without its one tied variance (Kendall's exact p-value; the others have ties),
#   - alliance_synthetic (data/raw, when present),
#   plus leave1out/influence for every tau^2 estimator on molloy2014.
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/bias.json.
#
# Every block records the R code that produced it: `setup` builds `dat`, `model` fits `res` to it and
# `call` is the expression evaluated next (the strings are parsed and run, so they are exactly what ran).
# Models use control=list(threshold=1e-12, tol=1e-12) so tau^2 is the exact optimum. trimfill() refits
# with metafor's defaults unless told otherwise, so the headline test and the tight control are passed
# through its `...`. selmodel() optimises by default with optim(BFGS) and finite-difference gradients,
# which stops about 1e-5 (relative) short of the maximum, and nlminb about 1e-8 short (1e-6 for a CI
# bound near 0); the reference refines nlminb's fit by Newton steps on metafor's own likelihood (see
# polish_selmodel). The default fit is stored too, under selmodel_default, to document the difference.

suppressPackageStartupMessages(library(metadat))

CTRL <- "control=list(threshold=1e-12, tol=1e-12)"

SETUPS <- list(
  molloy2014 = paste(
    'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/molloy2014.csv"))',
    "dat$label <- dat$study",
    sep = "; "
  ),
  crede2010 = paste(
    'dat <- escalc("ZCOR", ri=ri, ni=ni, data=dat.crede2010)',
    "dat <- dat[!is.na(dat$yi), ]",
    'dat$label <- paste0("Study ", dat$studyid, "/", dat$sampleid)',
    sep = "; "
  ),
  molloy2014_untied = paste(
    'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/molloy2014.csv"))',
    "dat <- dat[!duplicated(dat$vi), ]",
    "dat$label <- dat$study",
    sep = "; "
  )
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  SETUPS$alliance_synthetic <- paste(
    'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/alliance_synthetic.csv"))',
    "dat$label <- dat$study",
    sep = "; "
  )
} else {
  message("refs_bias.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

model_call <- function(method, test) {
  sprintf('res <- rma(yi, vi, data=dat, method="%s", test="%s", %s)', method, test, CTRL)
}

# ---- blocks: each returns a list with the call and the values ---------------------------------------

blk_regtest <- function(env) {
  call <- 'regtest(res, model="rma", predictor="sei")'
  r <- run_collecting_warnings(call, env)$value
  list(call = call, zval = unname(r$zval), pval = unname(r$pval), ddf = unname(r$ddf),
       est = unname(r$est), ci_lb = unname(r$ci.lb), ci_ub = unname(r$ci.ub))
}

blk_ranktest <- function(env) {
  call <- "ranktest(res)"
  out <- run_collecting_warnings(call, env)
  list(call = call, tau = unname(out$value$tau), pval = unname(out$value$pval), warnings = out$warnings)
}

blk_trimfill <- function(env, estimator) {
  call <- sprintf('trimfill(res, estimator="%s", test=res$test, %s)', estimator, CTRL)
  tf <- run_collecting_warnings(call, env)$value
  fill <- tf$fill
  list(call = call, estimate = unname(c(tf$beta)), se = tf$se, zval = tf$zval, pval = tf$pval,
       ci_lb = tf$ci.lb, ci_ub = tf$ci.ub, tau2 = tf$tau2, k0 = tf$k0, se_k0 = tf$se.k0, side = tf$side,
       p_k0 = if (is.null(tf$p.k0)) NA_real_ else tf$p.k0,
       yi_fill = I(as.numeric(tf$yi[fill])), vi_fill = I(as.numeric(tf$vi[fill])))
}

blk_lm <- function(env, predictor) {
  call <- sprintf("summary(lm(yi ~ %s, weights=1/vi, data=dat))", predictor)
  s <- run_collecting_warnings(call, env)$value
  co <- coef(s)
  ci <- suppressMessages(confint(lm(as.formula(paste("yi ~", predictor)), weights = 1 / vi, data = env$dat)))
  list(call = call, intercept = co[1, 1], se = co[1, 2], tval = co[1, 3], pval = co[1, 4],
       ci_lb = ci[1, 1], ci_ub = ci[1, 2], slope = co[2, 1], slope_se = co[2, 2], slope_tval = co[2, 3],
       slope_pval = co[2, 4], df = s$df[2], sigma = s$sigma)
}

sel_fields <- function(sm, call) {
  list(call = call, beta = unname(c(sm$beta)), se = unname(sm$se), zval = unname(sm$zval),
       pval = unname(sm$pval), ci_lb = unname(sm$ci.lb), ci_ub = unname(sm$ci.ub), tau2 = sm$tau2,
       se_tau2 = sm$se.tau2, delta = I(unname(sm$delta)), se_delta = I(unname(sm$se.delta)),
       ll = sm$ll, ll0 = sm$ll0, LRT = sm$LRT, LRTdf = sm$LRTdf, LRTp = sm$LRTp,
       counts = I(as.numeric(sm$ptable$k)))
}

# metafor's fit (nlminb) is refined by Newton steps on metafor's own likelihood (.selmodel.ll.stepfun in
# the natural parameters, as selmodel's Hessian uses it), with numDeriv's gradient and Richardson Hessian
# (r = 6, selmodel's setting); standard errors from that Hessian at the refined optimum, as selmodel
# computes them. metafor's unrefined values are kept under metafor_*.
polish_selmodel <- function(sm, newton_steps = 4) {
  k <- sm$k
  p <- sm$p
  negll <- function(par) {
    metafor:::.selmodel.ll.stepfun(
      par = c(par[seq_len(p)], par[p + 1], 1, par[-seq_len(p + 1)]), yi = c(sm$yi), vi = sm$vi, X = sm$X,
      preci = rep(1, k), k = k, pX = p, pvals = sm$pvals, deltas = sm$deltas,
      delta.val = c(1, rep(NA, sm$deltas - 1)), delta.transf = FALSE, mapfun = rep(NA, sm$deltas),
      delta.min = sm$delta.min, delta.max = sm$delta.max, tau2.val = NA, tau2.transf = FALSE,
      tau2.max = sm$tau2.max, beta.val = rep(NA, p), wi.fun = sm$wi.fun, steps = sm$steps, pgrp = sm$pgrp,
      alternative = sm$alternative, pval.min = sm$pval.min, intCtrl = list(), verbose = FALSE, digits = sm$digits
    )
  }
  x <- c(c(sm$beta), sm$tau2, sm$delta[-1])
  for (i in seq_len(newton_steps)) {
    x <- x - solve(numDeriv::hessian(negll, x, method.args = list(r = 6)), numDeriv::grad(negll, x))
  }
  vcov <- chol2inv(chol(numDeriv::hessian(negll, x, method.args = list(r = 6))))
  list(x = x, se = sqrt(diag(vcov)), ll = -negll(x))
}

blk_selmodel <- function(env) {
  call <- 'selmodel(res, type="stepfun", steps=0.025, control=list(optimizer="nlminb"))'
  out <- run_collecting_warnings(call, env)
  sm <- out$value
  pp <- polish_selmodel(sm)
  crit <- qnorm(0.975)
  beta <- pp$x[1]
  se <- pp$se[1]
  LRT <- max(0, -2 * (sm$ll0 - pp$ll))
  list(call = call, refined_by = "polish_selmodel() in refs_bias.R: 4 Newton steps on metafor:::.selmodel.ll.stepfun",
       beta = beta, se = se, zval = beta / se, pval = 2 * pnorm(abs(beta / se), lower.tail = FALSE),
       ci_lb = beta - crit * se, ci_ub = beta + crit * se, tau2 = pp$x[2], se_tau2 = pp$se[2],
       delta = I(c(1, pp$x[3])), se_delta = I(c(NA, pp$se[3])), ll = pp$ll, ll0 = sm$ll0, LRT = LRT,
       LRTdf = sm$LRTdf, LRTp = pchisq(LRT, df = sm$LRTdf, lower.tail = FALSE),
       counts = I(as.numeric(sm$ptable$k)), metafor_beta = unname(c(sm$beta)), metafor_se = unname(sm$se),
       metafor_tau2 = sm$tau2, metafor_delta = I(unname(sm$delta)), metafor_ll = sm$ll, metafor_LRT = sm$LRT,
       warnings = out$warnings)
}

blk_selmodel_default <- function(env) {
  call <- 'selmodel(res, type="stepfun", steps=0.025)'
  sel_fields(run_collecting_warnings(call, env)$value, call)
}

blk_fsn <- function(env) {
  call <- 'fsn(yi, vi, data=dat, type="Rosenthal")'
  f <- run_collecting_warnings(call, env)$value
  list(call = call, fsnum = f$fsnum, pval = f$pval, alpha = f$alpha)
}

blk_influence <- function(env) {
  call <- "influence(res)"
  inf <- run_collecting_warnings(call, env)$value
  list(call = call, rstudent = I(inf$inf$rstudent), dffits = I(inf$inf$dffits), cook_d = I(inf$inf$cook.d),
       cov_r = I(inf$inf$cov.r), tau2_del = I(inf$inf$tau2.del), QE_del = I(inf$inf$QE.del),
       hat = I(inf$inf$hat), weight = I(inf$inf$weight), dfbs = I(inf$dfbs[[1]]),
       inf = I(as.numeric(inf$is.infl)))
}

blk_leave1out <- function(env) {
  call <- "leave1out(res)"
  l <- run_collecting_warnings(call, env)$value
  stat <- if (!is.null(l$zval)) l$zval else l$tval
  list(call = call, estimate = I(l$estimate), se = I(l$se), stat = I(stat), pval = I(l$pval),
       ci_lb = I(l$ci.lb), ci_ub = I(l$ci.ub), Q = I(l$Q), Qp = I(l$Qp),
       tau2 = I(if (is.null(l$tau2)) rep(0, length(l$estimate)) else l$tau2), I2 = I(l$I2), H2 = I(l$H2))
}

blk_cumul <- function(env) {
  call <- "cumul(res, order=year)"
  cu <- run_collecting_warnings(call, env)
  l <- cu$value
  stat <- if (!is.null(l$zval)) l$zval else l$tval
  list(call = call, order = I(as.numeric(order(env$dat$year))), estimate = I(l$estimate), se = I(l$se),
       stat = I(stat), pval = I(l$pvals), ci_lb = I(l$ci.lb), ci_ub = I(l$ci.ub), Q = I(l$Q),
       Qp = I(l$Qp), tau2 = I(l$tau2), I2 = I(l$I2), H2 = I(l$H2), warnings = cu$warnings)
}

blk_baujat <- function(env) {
  call <- "baujat(res)"
  grDevices::pdf(NULL)
  b <- run_collecting_warnings(call, env)$value
  grDevices::dev.off()
  list(call = call, x = I(b$x), y = I(b$y))
}

# ---- cases --------------------------------------------------------------------------------------------

data_block <- function(env) {
  d <- env$dat
  list(study = I(as.character(d$label)), yi = I(as.numeric(d$yi)), vi = I(as.numeric(d$vi)),
       year = I(if (is.null(d$year)) numeric() else as.numeric(d$year)))
}

model_case <- function(setup, method, test, blocks) {
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  model <- model_call(method, test)
  eval(parse(text = model), envir = env)
  out <- list(setup = setup, model = model, method = method, test = test)
  for (b in names(blocks)) out[[b]] <- blocks[[b]](env)
  out
}

ALL <- list(
  regtest = blk_regtest, ranktest = blk_ranktest,
  trimfill_L0 = function(env) blk_trimfill(env, "L0"), trimfill_R0 = function(env) blk_trimfill(env, "R0"),
  pet = function(env) blk_lm(env, "sqrt(vi)"), peese = function(env) blk_lm(env, "vi"),
  selmodel = blk_selmodel, selmodel_default = blk_selmodel_default, fsn = blk_fsn,
  influence = blk_influence, leave1out = blk_leave1out, cumul = blk_cumul, baujat = blk_baujat
)
DIAG <- list(influence = blk_influence, leave1out = blk_leave1out)

cases <- list()
datasets <- list()
for (name in names(SETUPS)) {
  env <- new.env(parent = globalenv())
  eval(parse(text = SETUPS[[name]]), envir = env)
  datasets[[name]] <- c(list(setup = SETUPS[[name]]), data_block(env))
}
for (name in c("molloy2014", "crede2010", "alliance_synthetic")) {
  if (is.null(SETUPS[[name]])) next
  for (test in c("knha", "z")) {
    message("refs_bias.R: ", name, " REML ", test)
    cases[[sprintf("%s_REML_%s", name, test)]] <- c(list(dataset = name), model_case(SETUPS[[name]], "REML", test, ALL))
  }
}
cases[["molloy2014_untied_REML_knha"]] <- c(
  list(dataset = "molloy2014_untied"),
  model_case(SETUPS$molloy2014_untied, "REML", "knha", list(ranktest = blk_ranktest, regtest = blk_regtest))
)
for (method in c("FE", "DL", "HE", "HS", "SJ", "ML", "EB", "PM")) {
  for (test in c("z", "knha")) {
    cases[[sprintf("molloy2014_%s_%s", method, test)]] <- c(
      list(dataset = "molloy2014"), model_case(SETUPS$molloy2014, method, test, c(DIAG, list(baujat = blk_baujat)))
    )
  }
}
for (method in c("DL", "PM")) {
  cases[[sprintf("crede2010_%s_knha", method)]] <- c(
    list(dataset = "crede2010"), model_case(SETUPS$crede2010, method, "knha", DIAG)
  )
}

write_ref("bias", list(datasets = datasets, models = cases), extra_pkgs = "numDeriv")
