# Reference values for the selection model for dependent effects (alliancemeta.studies.bias.clustered_selection):
# metaselection::selection_model(selection_type = "step", estimator = "CML", vcov_type = "robust"), with its default
# prior penalties (define_priors()) and without (priors = NULL), steps .025 and .025/.5, on
#   - lehmann2018 (metadat::dat.lehmann2018, clustered by Full_Citation: the README example of metaselection),
#   - self_control (metaselection's bundled data: g, se_g, clustered by studyid),
#   - alliance_synthetic (data/raw, ZCOR, clustered by study_id; SYNTHETIC; skipped when absent).
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/clustered_selection.json.
#
# metaselection is not on the system package list: the script runs only when it can be loaded, from the library
# in the environment variable METASELECTION_LIB if set (otherwise the default library), and skips with a message
# otherwise. The fixture was made with metaselection 0.1.5 and simhelpers 0.3.1.9999 installed from the GitHub
# sources (jepusto/metaselection at commit ac99bd1, meghapsimatrix/simhelpers at 3b1e25c) with
#   R CMD INSTALL -l "$METASELECTION_LIB" simhelpers metaselection
# (their other dependencies -- optimx, nleqslv, purrr, future.apply, progressr -- from the system library).
#
# selection_model() optimises with optimx (Rvmmin, Nelder-Mead, nlminb; it keeps the best that satisfies the KKT
# checks) to optimx's default tolerances, so its estimates are refined here by Newton steps on metaselection's own
# penalised composite log-likelihood with its analytic score and Hessian (step_score, step_hessian); the cluster-robust
# sandwich is then formed from the same functions exactly as fit_selection_model() does it
# (MASS::ginv(H) %*% crossprod(rowsum(scores, cluster)) %*% t(MASS::ginv(H))). The package's own output is kept under
# `metaselection`. `bootstrap` (lehmann2018, default priors, steps .025 only) holds the two-stage cluster-bootstrap
# percentile interval with R = 1999 replicates (set.seed(20240910), as the README); its random draws cannot be
# reproduced outside R, so the Python test compares it within Monte Carlo error.

lib <- Sys.getenv("METASELECTION_LIB")
if (nzchar(lib)) .libPaths(c(lib, .libPaths()))
if (!suppressWarnings(requireNamespace("metaselection", quietly = TRUE))) {
  message("refs_clustered_selection.R: package metaselection not available (set METASELECTION_LIB); skipped")
} else {
  suppressPackageStartupMessages(library(metadat))
  ms <- asNamespace("metaselection")

  load_self_control <- function() {
    e <- new.env()
    utils::data("self_control", package = "metaselection", envir = e)
    e$self_control
  }
  SETUPS <- list(
    lehmann2018 = list(
      setup = "dat <- dat.lehmann2018; dat$cluster <- dat$Full_Citation; dat$sei <- sqrt(dat$vi)",
      get = function() { d <- dat.lehmann2018; data.frame(yi = d$yi, vi = d$vi, cluster = d$Full_Citation) }
    ),
    self_control = list(
      setup = 'data("self_control", package = "metaselection"); dat <- self_control; yi = g; sei = se_g; cluster = studyid',
      get = function() { d <- load_self_control(); data.frame(yi = d$g, vi = d$se_g^2, cluster = as.character(d$studyid)) }
    )
  )
  if (file.exists("data/raw/alliance_synthetic.csv")) {
    SETUPS$alliance_synthetic <- list(
      setup = 'dat <- escalc("ZCOR", ri=r, ni=n, data=read.csv("data/raw/alliance_synthetic.csv")); cluster = study_id',
      get = function() {
        d <- escalc("ZCOR", ri = r, ni = n, data = read.csv("data/raw/alliance_synthetic.csv"))
        data.frame(yi = as.numeric(d$yi), vi = as.numeric(d$vi), cluster = d$study_id)
      }
    )
  }

  refine_and_sandwich <- function(d, steps, priors, theta) {
    sei <- sqrt(d$vi)
    args <- list(yi = d$yi, sei = sei, steps = steps, priors = priors)
    for (i in 1:20) {
      g <- do.call(ms$step_score, c(list(theta = theta), args))
      H <- do.call(ms$step_hessian, c(list(theta = theta), args))
      theta <- theta - solve(H, g)
    }
    g <- do.call(ms$step_score, c(list(theta = theta), args))
    H <- do.call(ms$step_hessian, c(list(theta = theta), args))
    scores <- do.call(ms$step_score, c(list(theta = theta, contributions = TRUE), args))
    meat <- crossprod(rowsum(scores, group = d$cluster))
    Hinv <- MASS::ginv(H)
    vcov <- Hinv %*% meat %*% t(Hinv)
    ll <- ms$step_loglik(theta = theta, yi = d$yi, sei = sei, steps = steps) - log(2 * pi) * length(d$yi) / 2
    list(theta = unname(theta), se = sqrt(diag(vcov)), vcov = unname(vcov), se_model = sqrt(diag(solve(-H))),
         max_abs_score = max(abs(g)), ll = ll)
  }

  datasets <- list()
  cases <- list()
  for (name in names(SETUPS)) {
    d <- SETUPS[[name]]$get()
    datasets[[name]] <- list(setup = SETUPS[[name]]$setup, yi = I(d$yi), vi = I(d$vi), cluster = I(as.character(d$cluster)))
    for (steps_name in c("3psm", "4psm")) {
      steps <- if (steps_name == "3psm") 0.025 else c(0.025, 0.5)
      for (prior_name in c("default", "none")) {
        priors <- if (prior_name == "default") metaselection::define_priors() else NULL
        call <- sprintf(
          'selection_model(data = dat, yi = yi, vi = vi, cluster = cluster, selection_type = "step", steps = %s, estimator = "CML", vcov_type = "robust", priors = %s)',
          deparse(steps), if (prior_name == "default") "define_priors()" else "NULL"
        )
        fit <- tryCatch(
          run_collecting_warnings(
            "metaselection::selection_model(data = d, yi = yi, vi = vi, cluster = cluster, selection_type = 'step', steps = steps, estimator = 'CML', vcov_type = 'robust', priors = priors)",
            environment()
          ),
          error = function(e) e
        )
        key <- paste(name, steps_name, prior_name, sep = "/")
        if (inherits(fit, "error")) {
          cases[[key]] <- list(dataset = name, steps = I(steps), priors = prior_name, call = call, error = conditionMessage(fit))
          next
        }
        m <- fit$value
        rf <- refine_and_sandwich(d, steps, priors, m$est$Est)
        cases[[key]] <- list(
          dataset = name, steps = I(steps), priors = prior_name, call = call,
          metaselection = list(est = I(m$est$Est), se = I(m$est$SE), ll = m$ll, method = m$method, warnings = fit$warnings),
          refined = c(list(refined_by = "refine_and_sandwich() in refs_clustered_selection.R"), rf)
        )
        message(sprintf("refs_clustered_selection.R: %s", key))
      }
    }
  }

  # two-stage cluster bootstrap, percentile intervals (README example, with R = 1999)
  d <- SETUPS$lehmann2018$get()
  set.seed(20240910)
  boot_call <- 'selection_model(data = dat, yi = yi, vi = vi, cluster = cluster, selection_type = "step", steps = .025, CI_type = "percentile", bootstrap = "two-stage", R = 1999)'
  bm <- metaselection::selection_model(data = d, yi = yi, vi = vi, cluster = cluster, selection_type = "step",
                                       steps = .025, CI_type = "percentile", bootstrap = "two-stage", R = 1999)
  reps <- bm$bootstrap_reps
  boot_sd <- tapply(reps$Est, factor(reps$param, levels = bm$est$param), sd)
  bootstrap <- list(
    dataset = "lehmann2018", seed = 20240910, call = boot_call, R = 1999, R_converged = bm$R,
    est = I(bm$est$Est), percentile_lower = I(bm$est$percentile_lower), percentile_upper = I(bm$est$percentile_upper),
    boot_sd = I(unname(boot_sd))
  )
  message("refs_clustered_selection.R: bootstrap done")

  write_ref("clustered_selection", list(datasets = datasets, models = cases, bootstrap = bootstrap),
            extra_pkgs = c("metaselection", "simhelpers", "optimx"))
}
