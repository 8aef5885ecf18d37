# Reference values for the distribution of true effects (alliancemeta.studies.distribution):
# the share of true effects above thresholds q = atanh(r) for r = .1, .2, .3 (Mathur & VanderWeele 2019) from
#   (a) the normal model: 1 - pnorm((q - mu) / tau) with the delta-method SE and interval of
#       MetaUtility::prop_stronger(ci.method = "parametric") (their eq. 2, truncated to [0, 1]), and
#   (b) calibrated estimates (Wang & Lee 2019): mu + sqrt(tau2 / (tau2 + vi)) * (yi - mu), the share above q,
#       with the BCa interval of boot::boot.ci(type = "bca") over a bootstrap that resamples studies (clusters),
#       as prop_stronger(estimate.method = ci.method = "calibrated") does with its cluster.name argument;
# plus metafor's se.tau2 for every tau2 estimator. MetaUtility itself is not installable here, so the same
# computations are written out below from the published formulas on top of metafor and boot (MetaUtility
# 2.1.2, R/functions.R: calib_ests, prop_stronger), with mu and tau2 from REML (prop_stronger's
# calib.est.method defaults to DL; the package uses the headline estimator).
# Bootstrap cases store the resampling (boot.array(..., indices = TRUE)) so that the Python code can be run on
# exactly the same resamples; metafor is run with threshold = tol = 1e-12 (Fisher scoring and uniroot) everywhere.
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/distribution.json
# and tests/reference/data/mcdaniel1994.csv.

suppressPackageStartupMessages(library(boot))

DATA_DIR <- file.path("tests", "reference", "data")
CTRL <- list(threshold = 1e-12, tol = 1e-12, maxiter = 10000)
THRESHOLDS <- c(0.1, 0.2, 0.3)
LEVEL <- 0.95

mcd <- metadat::dat.mcdaniel1994
write.csv(mcd, file.path(DATA_DIR, "mcdaniel1994.csv"), row.names = FALSE)
message("wrote ", file.path(DATA_DIR, "mcdaniel1994.csv"))

DATASETS <- list(
  molloy2014 = list(path = "data/raw/molloy2014.csv", setup = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\"))",
                    cluster = NULL),
  mcdaniel1994 = list(path = file.path(DATA_DIR, "mcdaniel1994.csv"),
                      setup = "dat <- escalc(\"ZCOR\", ri=ri, ni=ni, data=read.csv(\"%s\"))", cluster = NULL)
)
if (file.exists("data/raw/alliance_synthetic.csv")) {
  DATASETS$alliance_synthetic <- list(
    path = "data/raw/alliance_synthetic.csv",
    setup = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\"))", cluster = "study_id")
  # the first 40 studies, for a clustered bootstrap whose resampling is small enough to store
  DATASETS$alliance_synthetic_40 <- list(
    path = "data/raw/alliance_synthetic.csv",
    setup = paste("dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"%s\"));",
                  "dat <- dat[dat$study_id %%in%% unique(dat$study_id)[1:40], ]"), cluster = "study_id")
} else {
  message("refs_distribution.R: data/raw/alliance_synthetic.csv not found; its cases are skipped")
}

# MetaUtility::calib_ests with a given estimator
calib_ests <- function(yi, vi, method) {
  m <- rma.uni(yi = yi, vi = vi, method = method, control = CTRL)
  c(m$b) + sqrt(m$tau2 / (m$tau2 + vi)) * (yi - c(m$b))
}

# prop_stronger(estimate.method = ci.method = "parametric", tail = "above"), delta method
delta_share <- function(q, M, t2, se.M, se.t2, level = LEVEL) {
  Z <- (q - M) / sqrt(t2)
  phat <- 1 - pnorm(Z)
  SE <- sqrt(se.M^2 / t2 + (se.t2^2 * (q - M)^2) / (4 * t2^3)) * dnorm(Z)
  tail.prob <- (1 - level) / 2
  list(share = phat, se = SE, lo = max(0, phat + qnorm(tail.prob) * SE), hi = min(1, phat - qnorm(tail.prob) * SE),
       extreme = phat < 0.15 | phat > 0.85)
}

point_case <- function(ds) {
  info <- DATASETS[[ds]]
  setup <- sprintf(info$setup, info$path)
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  dat <- env$dat
  q <- atanh(THRESHOLDS)
  methods <- c("REML", "ML", "DL", "PM", "EB", "HE", "HS", "SJ")
  fits <- lapply(methods, function(m) {
    res <- rma(yi, vi, data = dat, method = m, control = CTRL)
    list(call = sprintf("rma(yi, vi, data=dat, method=\"%s\", control=list(threshold=1e-12, tol=1e-12, maxiter=10000))", m),
         b = c(res$b), se = res$se, tau2 = res$tau2, se.tau2 = res$se.tau2)
  })
  names(fits) <- methods
  res <- rma(yi, vi, data = dat, method = "REML", control = CTRL)
  cal <- calib_ests(dat$yi, dat$vi, "REML")
  normal <- lapply(q, function(qq) delta_share(qq, c(res$b), res$tau2, res$se, res$se.tau2))
  list(dataset = ds, data = info$path, setup = setup, thresholds = THRESHOLDS, q = q, level = LEVEL, k = res$k,
       rma = fits, calibrated_estimates = cal,
       normal = list(share = sapply(normal, `[[`, "share"), se = sapply(normal, `[[`, "se"),
                     ci.lb = sapply(normal, `[[`, "lo"), ci.ub = sapply(normal, `[[`, "hi"),
                     extreme = sapply(normal, `[[`, "extreme")),
       calibrated = list(share = sapply(q, function(qq) sum(cal > qq) / length(cal))))
}

boot_case <- function(ds, R, seed) {
  info <- DATASETS[[ds]]
  setup <- sprintf(info$setup, info$path)
  env <- new.env(parent = globalenv())
  eval(parse(text = setup), envir = env)
  dat <- env$dat
  q <- atanh(THRESHOLDS)
  # units: clusters (all their rows together, as prop_stronger's group_nest/unnest) or rows
  unit <- if (is.null(info$cluster)) seq_len(nrow(dat)) else match(dat[[info$cluster]], unique(dat[[info$cluster]]))
  rows_of <- split(seq_len(nrow(dat)), unit)
  units <- data.frame(u = seq_along(rows_of))
  stat <- function(d, i) {
    rows <- unlist(rows_of[d$u[i]], use.names = FALSE)
    yi <- dat$yi[rows]; vi <- dat$vi[rows]
    m <- tryCatch(rma.uni(yi = yi, vi = vi, method = "REML", control = CTRL), error = function(e) NULL)
    if (is.null(m)) return(rep(NA_real_, 2 * length(q)))
    cal <- c(m$b) + sqrt(m$tau2 / (m$tau2 + vi)) * (yi - c(m$b))
    c(sapply(q, function(qq) sum(cal > qq) / length(cal)), 1 - pnorm((q - c(m$b)) / sqrt(m$tau2)))
  }
  set.seed(seed)
  b <- boot(units, stat, R = R)
  cis <- lapply(seq_along(b$t0), function(j) {
    bca <- tryCatch(boot.ci(b, conf = LEVEL, type = "bca", index = j)$bca[4:5], error = function(e) conditionMessage(e))
    perc <- tryCatch(boot.ci(b, conf = LEVEL, type = "perc", index = j)$percent[4:5], error = function(e) conditionMessage(e))
    list(bca = if (is.numeric(bca)) bca else NULL, bca_error = if (is.character(bca)) bca else NULL,
         perc = if (is.numeric(perc)) perc else NULL, perc_error = if (is.character(perc)) perc else NULL,
         sd = sd(b$t[, j]))
  })
  list(dataset = ds, data = info$path, setup = setup, cluster = info$cluster, thresholds = THRESHOLDS, q = q,
       level = LEVEL, R = R, seed = seed, n_units = nrow(units),
       call = sprintf("set.seed(%d); boot(units, stat, R = %d); boot.ci(b, conf = %s, type = \"bca\", index = j)",
                      seed, R, LEVEL),
       statistics = I(c(sprintf("calibrated_%s", THRESHOLDS), sprintf("normal_%s", THRESHOLDS))),
       t0 = b$t0, t = b$t, indices = boot.array(b, indices = TRUE), intervals = cis)
}

cases <- list()
for (ds in intersect(c("molloy2014", "mcdaniel1994", "alliance_synthetic"), names(DATASETS))) {
  cases[[sprintf("point/%s", ds)]] <- point_case(ds)
}
cases[["boot/molloy2014"]] <- boot_case("molloy2014", R = 1000, seed = 20261121)
if (!is.null(DATASETS$alliance_synthetic_40)) {
  cases[["point/alliance_synthetic_40"]] <- point_case("alliance_synthetic_40")
  cases[["boot/alliance_synthetic_40"]] <- boot_case("alliance_synthetic_40", R = 300, seed = 20261121)
}

write_ref("distribution", cases, extra_pkgs = "boot")
