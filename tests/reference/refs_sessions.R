# Session-level mixed models (lme4, REML) on the bundled SYNTHETIC session data.
# Writes tests/reference/sessions.json; run via make_refs.R, or alone from the repository root:
#   Rscript -e 'source("tests/reference/common.R"); source("tests/reference/refs_sessions.R")'
# The alliance decomposition and the lag are rebuilt here from their definitions (not taken from
# the package) so that the comparison also checks the Python data preparation.
suppressPackageStartupMessages(library(lme4))

sessions_path <- file.path("data", "raw", "alliance_sessions_synthetic.csv")
d <- read.csv(sessions_path, colClasses = c(client = "character", therapist = "character", site = "character"))
d <- d[order(d$client, d$session), ]
d$y <- -d$outcome  # outcome_lower_is_better: true, so y = -outcome (positive = better)

# within = alliance - client mean; between = client mean - therapist mean of client means;
# therapist = therapist mean - grand mean of client means
d$client_mean <- ave(d$alliance, d$client)
clients <- unique(d[, c("client", "therapist", "client_mean")])
therapist_mean <- tapply(clients$client_mean, clients$therapist, mean)
grand_mean <- mean(clients$client_mean)
d$alliance_within <- d$alliance - d$client_mean
d$alliance_between <- d$client_mean - therapist_mean[d$therapist]
d$alliance_therapist <- therapist_mean[d$therapist] - grand_mean

# lag: the previous session of the same client, only when it is session - 1
prev <- match(paste(d$client, d$session - 1), paste(d$client, d$session))
d$alliance_within_lag <- d$alliance_within[prev]
d$outcome_lag <- d$y[prev]
lagged <- d[!is.na(prev), ]

# minqa's BOBYQA with its trust region shrunk to 1e-12 (lme4's default stops when the deviance
# changes by less than 1e-6), so that the reference is the optimum itself.  The REML surface is
# flat along the therapist variance (the log-likelihood changes by < 1e-10 over a relative 1e-5 of
# it), where nloptwrap stops early even with tight tolerances; BOBYQA and nlminb agree.
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
    optimizer = fit@optinfo$optimizer,
    optimizer_code = fit@optinfo$conv$opt
  )
}

wb_call <- paste("lmer(y ~ alliance_within + alliance_between + alliance_therapist + session +",
                 "(1 | therapist) + (1 | client) + (0 + session | client), data = d, REML = TRUE, control = tight)")
wb <- lmer(y ~ alliance_within + alliance_between + alliance_therapist + session +
             (1 | therapist) + (1 | client) + (0 + session | client), data = d, REML = TRUE, control = tight)

lag_call <- paste("lmer(y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client),",
                  "data = lagged, REML = TRUE, control = tight)")
lag <- lmer(y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client),
            data = lagged, REML = TRUE, control = tight)

th_call <- paste("lmer(y ~ alliance_therapist + alliance_between + session +",
                 "(1 | therapist) + (1 | client) + (0 + session | client), data = d, REML = TRUE, control = tight)")
th <- lmer(y ~ alliance_therapist + alliance_between + session +
             (1 | therapist) + (1 | client) + (0 + session | client), data = d, REML = TRUE, control = tight)

write_ref("sessions", list(
  data = list(path = sessions_path, n_rows = nrow(d), n_lagged = nrow(lagged), outcome_lower_is_better = TRUE),
  within_between = summarise_fit(wb, wb_call),
  lagged = summarise_fit(lag, lag_call),
  therapist = summarise_fit(th, th_call)
), extra_pkgs = c("lme4"))
