# The MixedLM comparison estimators of the lagged_latent work (lme4, REML), written to tests/reference/dsem.json.
# Run via make_refs.R, or alone from the repository root:
#   Rscript -e 'source("tests/reference/common.R"); source("tests/reference/refs_dsem.R")'
#
# 1. detrended_lagged: alliancemeta.sessions.dsem.fit_detrended_lagged on the bundled SYNTHETIC session data
#    (blank cells allowed). The detrending is rebuilt here from its definition, not taken from the package:
#    per client, the residuals of an OLS line on session over the observed values (0 with one observed
#    value), for alliance and for the aligned outcome y = -outcome; the lags are the previous session's
#    residuals, only when that session is session - 1; rows with a missing y or lag are dropped.
# 2. boundary_lagged: the classical lagged model on tests/reference/data/dsem_boundary_lagged.csv (SYNTHETIC:
#    replicate 0 of the realistic scenario of benchmarks/sim_sessions.py, the lag frame as the pipeline
#    builds it), where the client intercept variance is estimated at 0; checks
#    alliancemeta.sessions.simulation._client_variance_at_zero against lme4's boundary solution.
suppressPackageStartupMessages(library(lme4))

# minqa's BOBYQA with its trust region shrunk to 1e-12 (lme4's default stops when the deviance changes by
# less than 1e-6), so that the reference is the optimum itself (as in refs_sessions.R).
tight <- lmerControl(optimizer = "bobyqa", calc.derivs = FALSE, optCtrl = list(rhoend = 1e-12, maxfun = 1e5))

summarise_fit <- function(fit, call) {
  vc <- as.data.frame(VarCorr(fit))
  name <- ifelse(vc$grp == "Residual", "residual",
                 ifelse(vc$grp == "therapist", "therapist",
                        ifelse(!is.na(vc$var1) & vc$var1 == "session", "client_session", "client")))
  list(
    call = call,
    n_obs = nobs(fit),
    terms = names(fixef(fit)),
    estimate = unname(fixef(fit)),
    se = unname(sqrt(diag(as.matrix(vcov(fit))))),
    variances = setNames(vc$vcov, name),
    reml_loglik = as.numeric(logLik(fit)),
    singular = isSingular(fit)
  )
}

ols_residuals <- function(x, t) {
  ok <- !is.na(x)
  r <- rep(NA_real_, length(x))
  if (sum(ok) == 1) r[ok] <- 0
  if (sum(ok) >= 2) r[ok] <- unname(residuals(lm(x[ok] ~ t[ok])))
  r
}

sessions_path <- file.path("data", "raw", "alliance_sessions_synthetic.csv")
d <- read.csv(sessions_path, colClasses = c(client = "character", therapist = "character", site = "character",
                                            case = "character"))
d <- d[order(d$client, d$session), ]
d$y <- -d$outcome  # outcome_lower_is_better: true
d$alliance_detrended <- unsplit(lapply(split(d, d$client), function(g) ols_residuals(g$alliance, g$session)),
                                d$client)
d$outcome_detrended <- unsplit(lapply(split(d, d$client), function(g) ols_residuals(g$y, g$session)), d$client)
prev <- match(paste(d$client, d$session - 1), paste(d$client, d$session))
d$alliance_within_lag <- d$alliance_detrended[prev]
d$outcome_lag <- d$outcome_detrended[prev]
lagged <- d[!is.na(prev) & !is.na(d$y) & !is.na(d$alliance_within_lag) & !is.na(d$outcome_lag), ]

detrended_call <- paste("lmer(y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client) +",
                        "(0 + session | client), data = lagged, REML = TRUE, control = tight)")
detrended <- lmer(y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client) +
                    (0 + session | client), data = lagged, REML = TRUE, control = tight)

boundary_path <- file.path("tests", "reference", "data", "dsem_boundary_lagged.csv")
b <- read.csv(boundary_path, colClasses = c(client = "character", therapist = "character"))
boundary_call <- paste("lmer(y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client),",
                       "data = b, REML = TRUE, control = tight)")
boundary <- lmer(y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client),
                 data = b, REML = TRUE, control = tight)

write_ref("dsem", list(
  detrended_lagged = c(list(data = sessions_path, n_rows = nrow(d), n_lagged = nrow(lagged),
                            residual_alliance_first = head(d$alliance_detrended, 20)),
                       summarise_fit(detrended, detrended_call)),
  boundary_lagged = c(list(data = boundary_path), summarise_fit(boundary, boundary_call))
), extra_pkgs = c("lme4"))
