# Reference values for the pipeline's session-level mixed models (alliancemeta.sessions.models): every model
# specification the pipeline fits (within_between, lagged with modelled client trends, therapist with its contrast,
# components, split; random alliance slopes; client covariates, numeric and treatment-coded; the detrend and
# random_slopes switches) fitted by lme4 (REML) with lmerTest's Satterthwaite degrees of freedom, on the bundled
# SYNTHETIC session data.  The data preparation (sign alignment, centred session, decomposition of the alliance and
# of each Bordin subscale over the observed cells, lags that respect gaps and blank cells, person-mean-centred
# lagged outcome, the case-level split) is rebuilt here from its definitions, not taken from the package, so the
# comparison checks the Python data preparation too.  Complete cases per model (lme4's na.omit).
# Writes tests/reference/sessions.json; run via make_refs.R, or alone from the repository root:
#   Rscript -e 'source("tests/reference/common.R"); source("tests/reference/refs_sessions.R")'
# Every fit uses BOBYQA with rhoend = 1e-12 and is then polished by Newton steps on lme4's own REML deviance
# function (devFunOnly = TRUE; numDeriv gradient and Hessian over the parameters not at the boundary), because
# BOBYQA stops 1e-10 to 2e-8 short of the optimum in log-likelihood along flat directions, which moves small
# coefficients by up to 2e-5 relative; the polished theta is then handed back to lmer (optimizer = NULL) so that
# lme4 and lmerTest compute every reported quantity at it.  BOBYQA's own log-likelihood is kept as loglik_bobyqa.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

sessions_path <- file.path("data", "raw", "alliance_sessions_synthetic.csv")
d <- read.csv(sessions_path, colClasses = c(client = "character", therapist = "character", site = "character",
                                            case = "character"))
d <- d[order(d$client, d$session), ]
d$y <- -d$outcome  # outcome_lower_is_better: true, so y = -outcome (positive = better)
d$session_c <- d$session - mean(d$session)  # the grand centre: the mean session number over all rows

mean_na <- function(x) if (all(is.na(x))) NA_real_ else mean(x, na.rm = TRUE)
# within = value - client mean; between = client mean - therapist mean of client means;
# therapist = therapist mean - grand mean of client means (observed cells only; a client counts once)
decompose <- function(d, col) {
  client_mean <- ave(d[[col]], d$client, FUN = mean_na)
  clients <- unique(data.frame(client = d$client, therapist = d$therapist, m = client_mean))
  therapist_mean <- tapply(clients$m, clients$therapist, mean_na)
  grand <- mean_na(clients$m)
  d[[paste0(col, "_within")]] <- d[[col]] - client_mean
  d[[paste0(col, "_between")]] <- client_mean - therapist_mean[d$therapist]
  d[[paste0(col, "_therapist")]] <- therapist_mean[d$therapist] - grand
  d
}
for (col in c("alliance", "alliance_goal", "alliance_task", "alliance_bond")) d <- decompose(d, col)

# lag: the previous session of the same client, only when it is session - 1; the lagged outcome is centred at the
# client's mean aligned outcome
prev <- match(paste(d$client, d$session - 1), paste(d$client, d$session))
d$alliance_within_lag <- d$alliance_within[prev]
d$outcome_lag <- (d$y - ave(d$y, d$client, FUN = mean_na))[prev]
lagged <- d[!is.na(prev), ]

# split: members of cases with two or more clients; spread of the members' client means (|difference| for two,
# SD for three or more)
client_mean <- tapply(d$alliance, d$client, mean_na)
case_of <- tapply(d$case, d$client, function(x) x[1])
members <- table(case_of)
spread <- tapply(client_mean, case_of[names(client_mean)], function(m) {
  m <- m[is.finite(m)]
  if (length(m) < 2) NA_real_ else if (length(m) == 2) abs(m[1] - m[2]) else sd(m)
})
split <- d[members[d$case] >= 2, ]
split$alliance_own_within <- split$alliance_within
split$alliance_own_between <- split$alliance_between
split$alliance_split <- as.numeric(spread[split$case])

# covariates: age as it is, gender treatment-coded against its first level in sorted order (factor's default)
for (name in c("d", "lagged", "split")) {
  frame <- get(name)
  frame$gender <- factor(frame$gender, levels = sort(unique(d$gender)))
  assign(name, frame)
}

tight <- lmerControl(optimizer = "bobyqa", calc.derivs = FALSE, optCtrl = list(rhoend = 1e-12, maxfun = 1e6))
COV <- "+ age + gender"
WITHIN <- "alliance_goal_within + alliance_task_within + alliance_bond_within"
BETWEEN <- "alliance_goal_between + alliance_task_between + alliance_bond_between"
specs <- list(
  # name = c(data, formula); every case REML
  within_between = c("d", paste("y ~ alliance_within + alliance_between + alliance_therapist + session_c", COV,
                                "+ (1 | therapist) + (1 + session_c + alliance_within | client)")),
  within_between_no_slopes = c("d", paste("y ~ alliance_within + alliance_between + alliance_therapist + session_c",
                                          COV, "+ (1 | therapist) + (1 + session_c | client)")),
  lagged = c("lagged", paste("y ~ alliance_within_lag + outcome_lag + session_c", COV,
                             "+ (1 | therapist) + (1 + session_c + alliance_within_lag | client)")),
  lagged_no_detrend = c("lagged", paste("y ~ alliance_within_lag + outcome_lag + session_c", COV,
                                        "+ (1 | therapist) + (1 + alliance_within_lag | client)")),
  therapist = c("d", paste("y ~ alliance_therapist + alliance_between + session_c", COV,
                           "+ (1 | therapist) + (1 + session_c | client)")),
  components = c("d", paste("y ~", WITHIN, "+", BETWEEN, "+ alliance_therapist + session_c", COV,
                            "+ (1 | therapist) + (1 + session_c +", WITHIN, "| client)")),
  split = c("split", paste("y ~ alliance_own_within + alliance_own_between + alliance_split + alliance_therapist",
                           "+ session_c", COV, "+ (1 | case) + (1 + session_c + alliance_own_within | client)"))
)
contrasts <- list(therapist = list(therapist_minus_between = c(alliance_therapist = 1, alliance_between = -1)))

summarise_fit <- function(fit, name, call, data_name, formula, n_rows, warnings) {
  beta <- fixef(fit)
  p <- length(beta)
  coefs <- summary(fit)$coefficients
  rows <- lapply(seq_len(p), function(k) contrast_row(fit, diag(p)[k, ]))
  pick <- function(field) vapply(rows, function(r) r[[field]], numeric(1))
  vc <- as.data.frame(VarCorr(fit), order = "lower.tri")
  case <- list(
    call = call, data = data_name, formula = formula, warnings = warnings,
    n_rows = n_rows, n_obs = nobs(fit), n_groups = as.list(ngrps(fit)),
    terms = names(beta), estimate = unname(beta), se = unname(coefs[, "Std. Error"]),
    df = unname(coefs[, "df"]), t = unname(coefs[, "t value"]), pval = unname(coefs[, "Pr(>|t|)"]),
    ci_lb = pick("ci_lb"), ci_ub = pick("ci_ub"),
    theta = unname(getME(fit, "theta")), theta_names = names(getME(fit, "theta")), sigma = sigma(fit),
    varcorr = list(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov, sdcor = vc$sdcor),
    loglik = as.numeric(logLik(fit)), singular = isSingular(fit),
    optimizer = fit@optinfo$optimizer, optimizer_code = fit@optinfo$conv$opt, feval = fit@optinfo$feval
  )
  if (!is.null(contrasts[[name]])) {
    case$contrasts <- lapply(contrasts[[name]], function(w) {
      L <- setNames(numeric(p), names(beta))
      L[names(w)] <- w
      contrast_row(fit, L)
    })
  }
  case
}

# Newton steps on the profiled REML deviance from BOBYQA's theta; parameters at the boundary (lower bound 0 and
# theta < 1e-6) are set to 0 and held there.  A step is taken only when it lowers the deviance.
polish <- function(formula, data, fit, max_iter = 20) {
  dev <- lme4::lmer(as.formula(formula), data = data, REML = TRUE, devFunOnly = TRUE)
  theta <- getME(fit, "theta")
  lower <- getME(fit, "lower")
  boundary <- lower == 0 & theta < 1e-6
  theta[boundary] <- 0
  free <- !boundary
  d0 <- dev(theta)
  for (k in seq_len(max_iter)) {
    g <- numDeriv::grad(dev, theta)[free]
    H <- numDeriv::hessian(dev, theta)[free, free, drop = FALSE]
    step <- solve(H, g)
    cand <- theta
    cand[free] <- theta[free] - step
    dc <- dev(cand)
    if (!(dc < d0)) break
    theta <- cand
    d0 <- dc
    if (max(abs(step)) < 1e-12) break
  }
  theta
}

cases <- list(data = list(path = sessions_path, n_rows = nrow(d), n_lagged = nrow(lagged), n_split = nrow(split),
                          n_split_cases = length(unique(split$case)), session_centre = mean(d$session),
                          outcome_lower_is_better = TRUE, covariates = c("age", "gender")))
env <- environment()
for (call_name in names(specs)) {
  s <- specs[[call_name]]
  call <- sprintf("lmerTest::lmer(%s, data = %s, REML = TRUE, control = tight)", s[2], s[1])
  t0 <- proc.time()[["elapsed"]]
  run <- run_collecting_warnings(call, env)
  theta <- polish(s[2], get(s[1]), run$value)
  polished <- sprintf("lmerTest::lmer(%s, data = %s, REML = TRUE, start = list(theta = theta), control = %s)", s[2],
                      s[1], "lmerControl(optimizer = NULL)")
  final <- run_collecting_warnings(polished, env)
  message(sprintf("%s: %.1f s, log-likelihood %.3g above BOBYQA's", call_name, proc.time()[["elapsed"]] - t0,
                  as.numeric(logLik(final$value)) - as.numeric(logLik(run$value))))
  cases[[call_name]] <- summarise_fit(final$value, call_name, paste(call, "; then", polished), s[1], s[2],
                                      nrow(get(s[1])), c(run$warnings, final$warnings))
  cases[[call_name]]$loglik_bobyqa <- as.numeric(logLik(run$value))
}

write_ref("sessions", cases, extra_pkgs = c("lme4", "lmerTest", "numDeriv"))
