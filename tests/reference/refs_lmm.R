# Reference values for the linear mixed model engine (alliancemeta.sessions.lmm): lme4 REML/ML fits with
# lmerTest's Satterthwaite degrees of freedom, on
#   (a) tests/reference/data/lmm_sessions.csv: the bundled SYNTHETIC session data after the package's alliance
#       decomposition and lag (written by tests/reference/make_lmm_data.py, so both sides fit identical data);
#   (b) tests/reference/data/sleepstudy.csv: lme4::sleepstudy (18 subjects x 10 days; a single level with a
#       random Days slope), written here, plus `pair` (subjects paired in order: 1-2, 3-4, ...) as an upper
#       level whose variance REML puts at zero (a singular fit);
# random intercepts only, correlated (1 + x | g) and uncorrelated (1 + x || g) client slopes, with and without the
# therapist level, a therapist slope, and ML.  Sourced by make_refs.R after common.R; run from the repository root:
#   Rscript -e 'source("tests/reference/common.R"); source("tests/reference/refs_lmm.R")'
# Writes tests/reference/lmm.json.
#
# Every fit uses BOBYQA with its trust region shrunk to rhoend = 1e-12 (lme4's default stops when the deviance
# changes by about 1e-6), so that the stored values are the optimum itself, not the optimiser's stopping point.
# lmerTest then differentiates the deviance numerically (numDeriv, Richardson extrapolation) at that optimum.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})

DATA_DIR <- file.path("tests", "reference", "data")
d <- read.csv(file.path(DATA_DIR, "lmm_sessions.csv"), colClasses = c(therapist = "character", client = "character"))
lagged <- d[!is.na(d$outcome_lag) & !is.na(d$alliance_within_lag), ]

sleep <- data.frame(Subject = as.character(lme4::sleepstudy$Subject), Days = lme4::sleepstudy$Days,
                    Reaction = lme4::sleepstudy$Reaction)
subjects <- unique(sleep$Subject)
sleep$pair <- paste0("p", (match(sleep$Subject, subjects) + 1) %/% 2)
write.csv(sleep, file.path(DATA_DIR, "sleepstudy.csv"), row.names = FALSE)
message("wrote ", file.path(DATA_DIR, "sleepstudy.csv"))

tight <- lmerControl(optimizer = "bobyqa", calc.derivs = FALSE, optCtrl = list(rhoend = 1e-12, maxfun = 1e6))

WB <- "alliance_within + alliance_between + alliance_therapist + session"
specs <- list(
  # name = c(data, formula, REML).  On `y` (the bundled data) the alliance_within slope variance is small;
  # `y_slope` adds a larger correlated random slope (see make_lmm_data.py).
  wb_intercepts = c("d", paste("y ~", WB, "+ (1 | therapist) + (1 | client)"), "TRUE"),
  wb_session_diag = c("d", paste("y ~", WB, "+ (1 | therapist) + (1 + session || client)"), "TRUE"),
  wb_slope_corr = c("d", paste("y ~", WB, "+ (1 | therapist) + (1 + alliance_within | client)"), "TRUE"),
  wb_slope_diag = c("d", paste("y ~", WB, "+ (1 | therapist) + (1 + alliance_within || client)"), "TRUE"),
  therapist = c("d", paste("y ~ alliance_therapist + alliance_between + session",
                           "+ (1 | therapist) + (1 + session || client)"), "TRUE"),
  lagged = c("lagged", "y ~ alliance_within_lag + outcome_lag + session + (1 | therapist) + (1 | client)", "TRUE"),
  slope_corr = c("d", paste("y_slope ~", WB, "+ (1 | therapist) + (1 + alliance_within | client)"), "TRUE"),
  slope_diag = c("d", paste("y_slope ~", WB, "+ (1 | therapist) + (1 + alliance_within || client)"), "TRUE"),
  slope_corr_no_therapist = c("d", paste("y_slope ~", WB, "+ (1 + alliance_within | client)"), "TRUE"),
  slope_corr_ml = c("d", paste("y_slope ~", WB, "+ (1 | therapist) + (1 + alliance_within | client)"), "FALSE"),
  slope_session_corr = c("d", paste("y_slope ~", WB, "+ (1 | therapist) + (1 + alliance_within + session | client)"),
                         "TRUE"),
  slope_therapist_slope = c("d", paste("y_slope ~", WB,
                                       "+ (1 + alliance_within || therapist) + (1 + alliance_within | client)"), "TRUE"),
  sleepstudy_intercept = c("sleep", "Reaction ~ Days + (1 | Subject)", "TRUE"),
  sleepstudy_corr = c("sleep", "Reaction ~ Days + (1 + Days | Subject)", "TRUE"),
  sleepstudy_diag = c("sleep", "Reaction ~ Days + (1 + Days || Subject)", "TRUE"),
  sleepstudy_corr_ml = c("sleep", "Reaction ~ Days + (1 + Days | Subject)", "FALSE"),
  sleepstudy_pair_singular = c("sleep", "Reaction ~ Days + (1 | pair) + (1 + Days | Subject)", "TRUE")
)
# Linear contrasts (Satterthwaite df via lmerTest::contest1D), by case: named weights on the coefficients.
contrasts <- list(
  therapist = list(therapist_minus_between = c(alliance_therapist = 1, alliance_between = -1)),
  slope_corr = list(within_minus_between = c(alliance_within = 1, alliance_between = -1)),
  sleepstudy_corr = list(day10 = c("(Intercept)" = 1, Days = 10))
)

summarise_fit <- function(fit, name, call, data_name, formula, reml, warnings) {
  beta <- fixef(fit)
  p <- length(beta)
  coefs <- summary(fit)$coefficients
  rows <- lapply(seq_len(p), function(k) contrast_row(fit, diag(p)[k, ]))
  pick <- function(field) vapply(rows, function(r) r[[field]], numeric(1))
  vc <- as.data.frame(VarCorr(fit), order = "lower.tri")
  case <- list(
    call = call, data = data_name, formula = formula, REML = reml, warnings = warnings,
    n_obs = nobs(fit), n_groups = as.list(ngrps(fit)),
    terms = names(beta), estimate = unname(beta), se = unname(coefs[, "Std. Error"]),
    vcov = unname(as.matrix(vcov(fit))),
    df = unname(coefs[, "df"]), t = unname(coefs[, "t value"]), pval = unname(coefs[, "Pr(>|t|)"]),
    ci_lb = pick("ci_lb"), ci_ub = pick("ci_ub"),
    theta = unname(getME(fit, "theta")), theta_names = names(getME(fit, "theta")),
    lower = unname(getME(fit, "lower")), sigma = sigma(fit),
    varcorr = list(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov, sdcor = vc$sdcor),
    loglik = as.numeric(logLik(fit)), deviance = if (reml == "TRUE") unname(REMLcrit(fit)) else deviance(fit),
    singular = isSingular(fit),
    vcov_varpar = unname(fit@vcov_varpar),
    jacobian = lapply(fit@Jac_list, function(J) unname(J)),
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

cases <- list()
env <- environment()
for (call_name in names(specs)) {
  s <- specs[[call_name]]
  call <- sprintf("lmerTest::lmer(%s, data = %s, REML = %s, control = tight)", s[2], s[1], s[3])
  t0 <- proc.time()[["elapsed"]]
  run <- run_collecting_warnings(call, env)
  message(sprintf("%s: %.1f s", call_name, proc.time()[["elapsed"]] - t0))
  cases[[call_name]] <- summarise_fit(run$value, call_name, call, s[1], s[2], s[3], run$warnings)
}

write_ref("lmm", cases, extra_pkgs = c("lme4", "lmerTest", "numDeriv"))
