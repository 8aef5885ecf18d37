# Reference values for the weighted-normal (step-function selection) likelihood of RoBMA's selection models
# (alliancemeta.studies.bayes.weightfunctions.selection_loglik): metafor's selmodel(type="stepfun") log-likelihood
# at its maximum, for every weight function of RoBMA-PSMA (one-sided steps .05, (.025, .05), (.05, .5),
# (.025, .05, .5); two-sided steps .05 and (.05, .10)), on
#   - molloy2014 (data/raw, ZCOR),
#   - alliance_synthetic (data/raw, ZCOR; 401 effects).
# The Python test evaluates selection_loglik at metafor's estimates (beta, tau2, delta) and compares the log-
# likelihood: at a maximum the log-likelihood is insensitive to the optimiser's stopping point (first order),
# so metafor's default optimiser suffices. Sourced by make_refs.R after common.R; run from the repository root.
# Writes tests/reference/robma.json.

SETUPS <- list(
  molloy2014 = 'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/molloy2014.csv"))',
  alliance_synthetic = 'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/alliance_synthetic.csv"))'
)
WEIGHTS <- list(
  "1s(.05)" = 'steps=c(0.05), alternative="greater"',
  "1s(.025,.05)" = 'steps=c(0.025, 0.05), alternative="greater"',
  "1s(.05,.5)" = 'steps=c(0.05, 0.5), alternative="greater"',
  "1s(.025,.05,.5)" = 'steps=c(0.025, 0.05, 0.5), alternative="greater"',
  "2s(.05)" = 'steps=c(0.05), alternative="two.sided"',
  "2s(.05,.1)" = 'steps=c(0.05, 0.10), alternative="two.sided"'
)

cases <- list()
for (name in names(SETUPS)) {
  if (name == "alliance_synthetic" && !file.exists("data/raw/alliance_synthetic.csv")) next
  env <- new.env()
  eval(parse(text = SETUPS[[name]]), envir = env)
  eval(parse(text = 'res <- rma(yi, vi, data=dat, method="ML", control=list(threshold=1e-12, tol=1e-12))'),
       envir = env)
  for (wf in names(WEIGHTS)) {
    call <- sprintf('sel <- selmodel(res, type="stepfun", %s)', WEIGHTS[[wf]])
    out <- run_collecting_warnings(call, env)
    sel <- out$value
    cases[[sprintf("%s_%s", name, wf)]] <- list(
      dataset = name, setup = SETUPS[[name]], call = call, weightfunction = wf,
      yi = I(as.numeric(env$dat$yi)), vi = I(as.numeric(env$dat$vi)),
      beta = as.numeric(sel$beta), tau2 = as.numeric(sel$tau2), delta = I(as.numeric(sel$delta)),
      ll = as.numeric(sel$ll), warnings = out$warnings
    )
  }
}
write_ref("robma", cases)
