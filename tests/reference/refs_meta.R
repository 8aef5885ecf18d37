# Reference values for the rma.uni engine (alliancemeta.core.effects, alliancemeta.studies.random_effects):
#   escalc (ZCOR, COR, UCOR), rma.uni for every tau^2 estimator x test with predict() and confint(),
#   meta-regression, subgroup analyses and edge cases (k = 2, identical yi, k = 1).
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/meta.json.
#
# Every case records the R code that produced it: `setup` builds the data frame `dat`, `call` is the
# expression evaluated against it (the strings below are parsed and run, so they are exactly what ran).
# Fits use control=list(threshold=1e-12, tol=1e-12) (Fisher scoring threshold on tau^2 changes and the
# uniroot tolerance of PM) and confint() uses control=list(tol=1e-12), so the stored numbers are the
# exact optimum; one case keeps metafor's default control to document how far the defaults are from it.

suppressPackageStartupMessages(library(gsl)) # escalc(measure = "UCOR") calls gsl::hyperg_2F1

# Factor levels (reference category, coefficient names) follow sort(), which depends on the collation
# locale; the C locale sorts by code point, as the Python tests do.
collate_before <- Sys.getlocale("LC_COLLATE")
invisible(Sys.setlocale("LC_COLLATE", "C"))

METHODS <- c("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")
TESTS <- c("z", "t", "knha")
CTRL <- "control=list(threshold=1e-12, tol=1e-12)"
CI_CTRL <- "control=list(tol=1e-12)"

DATASETS <- c(molloy2014 = "data/raw/molloy2014.csv")
if (file.exists("data/raw/alliance_synthetic.csv")) {
  DATASETS <- c(DATASETS, alliance_synthetic = "data/raw/alliance_synthetic.csv")
} else {
  message("refs_meta.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

setup_code <- function(path, measure = "ZCOR") {
  sprintf('dat <- escalc("%s", ri=r, ni=n, data=read.csv("%s"))', measure, path)
}
new_data_env <- function(setup) {
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  env
}
rma_call <- function(method, test, extra = "", data = "dat", yi = "yi", ctrl = CTRL) {
  args <- c(yi, "vi", if (nzchar(extra)) extra, sprintf("data=%s", data),
            sprintf('method="%s"', method), sprintf('test="%s"', test), if (nzchar(ctrl)) ctrl)
  sprintf("rma(%s)", paste(args, collapse = ", "))
}

fit_fields <- function(res) {
  list(
    method = res$method, test = res$test,
    coef_names = I(names(coef(res))), X_colnames = I(colnames(res$X)),
    b = unname(c(res$b)), se = unname(res$se), zval = unname(res$zval), pval = unname(res$pval),
    ci.lb = unname(res$ci.lb), ci.ub = unname(res$ci.ub),
    tau2 = res$tau2, QE = res$QE, QEp = res$QEp, I2 = res$I2, H2 = res$H2,
    QM = res$QM, QMdf = res$QMdf, QMp = res$QMp, k = res$k, p = res$p
  )
}
pred_fields <- function(pr) {
  pick <- function(name) if (is.null(pr[[name]])) NA_real_ else unname(pr[[name]])
  list(pred = pick("pred"), se = pick("se"), ci.lb = pick("ci.lb"), ci.ub = pick("ci.ub"),
       pi.lb = pick("pi.lb"), pi.ub = pick("pi.ub"))
}
confint_fields <- function(ci) {
  rnd <- unclass(ci)$random
  row <- function(name) list(estimate = rnd[name, "estimate"], ci.lb = rnd[name, "ci.lb"], ci.ub = rnd[name, "ci.ub"])
  list(tau2 = row("tau^2"), I2 = row("I^2(%)"), H2 = row("H^2"), ci.null = unclass(ci)$ci.null)
}

# One rma.uni fit with predict() (Fisher z and back-transformed r) and, for random-effects models,
# the Q-profile confint().
rma_case <- function(dataset, path, setup, method, test, call, rows = NULL, yi_const = NULL,
                     with_confint = TRUE, ci_ctrl = CI_CTRL, note = NULL) {
  env <- new_data_env(setup)
  fitted <- run_collecting_warnings(call, env)
  res <- fitted$value
  env$res <- res
  pr_call <- "predict(res)"
  pr_r_call <- "predict(res, transf=transf.ztor)"
  case <- list(
    dataset = dataset, data = path, measure = "ZCOR", setup = setup, call = call,
    requested = list(method = method, test = test),
    rows = if (is.null(rows)) NULL else I(rows), yi_const = yi_const, note = note,
    warnings = fitted$warnings,
    fit = fit_fields(res),
    predict = c(list(call = pr_call), pred_fields(run_collecting_warnings(pr_call, env)$value)),
    predict_r = c(list(call = pr_r_call), pred_fields(run_collecting_warnings(pr_r_call, env)$value))
  )
  if (with_confint && !is.element(res$method, c("FE", "EE", "CE"))) {
    ci_call <- if (nzchar(ci_ctrl)) sprintf("confint(res, %s)", ci_ctrl) else "confint(res)"
    ci <- tryCatch(run_collecting_warnings(ci_call, env), error = function(e) e)
    case$confint <- if (inherits(ci, "error")) {
      list(call = ci_call, error = conditionMessage(ci))
    } else {
      c(list(call = ci_call, warnings = ci$warnings), confint_fields(ci$value))
    }
  }
  case[!vapply(case, is.null, logical(1))]
}

# Gauss's hypergeometric series 2F1(a, b; c; z) = sum_j (a)_j (b)_j / ((c)_j j!) z^j, summed term by term
# until a term falls below 1e-17 of the sum.  For UCOR (a = b = 1/2, c = (n-2)/2, z = 1 - r^2 in [0, 1))
# every term is positive, so the sum is accurate to a few ulp.  It is an independent check of
# gsl::hyperg_2F1, which metafor's escalc(measure = "UCOR") calls: gsl 2.1-8 is off by 1e-3 for
# integer c with z near 1 (r = 0.06, n = 22: 1.0290797557844746 instead of 1.0280369396705038).
f21_series <- function(a, b, c, z) {
  vapply(seq_along(z), function(i) {
    term <- 1
    total <- 1
    j <- 0
    repeat {
      term <- term * (a + j) * (b + j) / ((c[i] + j) * (j + 1)) * z[i]
      total <- total + term
      j <- j + 1
      if (term < 1e-17 * total) break
    }
    total
  }, numeric(1))
}
UCOR_SERIES_CODE <- paste(
  "yi_series <- r * f21_series(1/2, 1/2, (n-2)/2, 1-r^2); vi_series <- (1-yi_series^2)^2/(n-1)",
  "(f21_series: the defining power series, see refs_meta.R)"
)

cases <- list()

# ---- escalc --------------------------------------------------------------------------------------
for (ds in names(DATASETS)) {
  for (measure in c("ZCOR", "COR", "UCOR")) {
    setup <- setup_code(DATASETS[[ds]], measure)
    env <- new_data_env(setup)
    case <- list(
      dataset = ds, data = DATASETS[[ds]], measure = measure, call = setup,
      yi = as.numeric(env$dat$yi), vi = as.numeric(env$dat$vi)
    )
    if (measure == "UCOR") {
      d <- env$dat
      yi_series <- d$r * f21_series(1 / 2, 1 / 2, (d$n - 2) / 2, 1 - d$r^2)
      defect <- which(abs(case$yi - yi_series) > 1e-10 * abs(yi_series))
      case$series <- list(
        call = UCOR_SERIES_CODE, yi = yi_series, vi = (1 - yi_series^2)^2 / (d$n - 1),
        gsl_defect_rows = I(defect),
        note = "rows (1-based) where metafor's gsl::hyperg_2F1 value differs from the series by > 1e-10"
      )
    }
    cases[[sprintf("escalc/%s/%s", ds, measure)]] <- case
  }
}

# ---- rma.uni: every estimator x test ---------------------------------------------------------------
for (ds in names(DATASETS)) {
  setup <- setup_code(DATASETS[[ds]])
  for (method in METHODS) for (test in TESTS) {
    cases[[sprintf("rma/%s/%s/%s", ds, method, test)]] <-
      rma_case(ds, DATASETS[[ds]], setup, method, test, rma_call(method, test))
  }
  cases[[sprintf("rma_default_control/%s/REML/z", ds)]] <- rma_case(
    ds, DATASETS[[ds]], setup, "REML", "z", rma_call("REML", "z", ctrl = ""), ci_ctrl = "",
    note = "metafor's default control: Fisher scoring stops when tau^2 changes by less than 1e-5"
  )
}

# ---- edge cases (molloy2014) -----------------------------------------------------------------------
molloy <- DATASETS[["molloy2014"]]
for (method in METHODS) for (test in TESTS) {
  cases[[sprintf("edge_k2/molloy2014/%s/%s", method, test)]] <- rma_case(
    "molloy2014", molloy, setup_code(molloy), method, test, rma_call(method, test, data = "dat[1:2, ]"), rows = 1:2,
    note = "k = 2: the first two studies"
  )
  cases[[sprintf("edge_identical_yi/molloy2014/%s/%s", method, test)]] <- rma_case(
    "molloy2014", molloy, setup_code(molloy), method, test, rma_call(method, test, yi = "rep(0.25, nrow(dat))"),
    yi_const = 0.25, note = "all yi equal (0.25) with molloy2014's vi: QE = 0, tau^2 = 0"
  )
}
for (method in c("FE", "DL", "REML", "PM")) for (test in c("z", "knha")) {
  cases[[sprintf("edge_k1/molloy2014/%s/%s", method, test)]] <- rma_case(
    "molloy2014", molloy, setup_code(molloy), method, test, rma_call(method, test, data = "dat[1, ]"), rows = 1L,
    note = "k = 1: metafor sets tau^2 = 0 and falls back to test = \"z\""
  )
}

# ---- meta-regression -------------------------------------------------------------------------------
MODS <- list(molloy2014 = c("~ meanage", "~ factor(design)", "~ design + meanage + quality"),
             alliance_synthetic = c("~ rater", "~ rater + treatment + year"))
for (ds in intersect(names(MODS), names(DATASETS))) {
  setup <- setup_code(DATASETS[[ds]])
  for (mods in MODS[[ds]]) for (method in c("REML", "ML")) for (test in c("z", "knha")) {
    call <- rma_call(method, test, extra = sprintf("mods=%s", mods))
    env <- new_data_env(setup)
    fitted <- run_collecting_warnings(call, env)
    res <- fitted$value
    cases[[sprintf("metareg/%s/%s/%s/%s", ds, gsub(" ", "", mods), method, test)]] <- c(
      list(dataset = ds, data = DATASETS[[ds]], measure = "ZCOR", setup = setup, call = call, mods = mods,
           requested = list(method = method, test = test), warnings = fitted$warnings),
      list(fit = c(fit_fields(res), list(R2 = res$R2)))
    )
  }
}

# ---- subgroup analyses -----------------------------------------------------------------------------
SUBGROUPS <- c(molloy2014 = "design", alliance_synthetic = "rater")
for (ds in intersect(names(SUBGROUPS), names(DATASETS))) {
  setup <- setup_code(DATASETS[[ds]])
  mod <- SUBGROUPS[[ds]]
  for (method in c("REML", "FE")) {
    env <- new_data_env(setup)
    levels <- sort(unique(env$dat[[mod]]))
    groups <- list()
    for (lev in levels) {
      call <- rma_call(method, "z", extra = sprintf('subset=%s=="%s"', mod, lev))
      res <- run_collecting_warnings(call, env)$value
      groups[[lev]] <- c(list(call = call), fit_fields(res))
    }
    env$estimates <- vapply(groups, function(g) g$b, numeric(1))
    env$ses <- vapply(groups, function(g) g$se, numeric(1))
    wald_call <- sprintf('rma(yi, vi, mods=~factor(%s), data=dat, method="FE")', mod)
    wald <- run_collecting_warnings(wald_call, env)$value
    fe_call <- 'rma(estimates, sei=ses, method="FE")'
    fe <- run_collecting_warnings(fe_call, env)$value
    cases[[sprintf("subgroup/%s/%s/%s", ds, mod, method)]] <- list(
      dataset = ds, data = DATASETS[[ds]], measure = "ZCOR", setup = setup, moderator = mod,
      method = method, levels = I(levels), groups = groups,
      between_wald = list(call = wald_call, QM = wald$QM, QMdf = wald$QMdf, QMp = wald$QMp),
      between_fe = list(call = sprintf("estimates/ses: b/se of the %s subgroup fits; %s", method, fe_call),
                        QE = fe$QE, QEdf = fe$k - fe$p, QEp = fe$QEp)
    )
  }
}

write_ref("meta", cases, extra_pkgs = "gsl")
invisible(Sys.setlocale("LC_COLLATE", collate_before))
