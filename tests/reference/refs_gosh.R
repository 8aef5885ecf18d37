# Reference values for the GOSH engine (alliancemeta.studies.gosh): metafor::gosh() on
#   - molloy2014 (k = 16, data/raw): every one of the 65,535 subsets, FE and REML;
#   - cohen1981 (metadat::dat.cohen1981, k = 20, not used elsewhere): every one of the 1,048,575 subsets
#     for FE and DL (metafor's closed-form fast path), and 1,000 random subsets for REML and PM;
#   - mcdaniel1994 (metadat::dat.mcdaniel1994, k = 160): 400 random subsets for REML (inclusion
#     patterns longer than one 64-bit word).
# Sourced by make_refs.R after common.R; run from the repository root. Writes tests/reference/gosh.json
# and the data it fitted to tests/reference/data/cohen1981.csv. About 15 minutes on an idle
# machine (metafor refits REML 65,535 times to a tight threshold, and FE/DL 1,048,575 times each).
#
# Every case records `setup` (builds `dat`), `model` (the rma() call; gosh() passes its control on to
# every subset) and `call` (the gosh() call). REML runs Fisher scoring to a threshold of 1e-15 on the
# change in tau^2 (up to 100,000 iterations): on a flat likelihood Fisher scoring converges slowly, and
# at 1e-12 some subsets stop 1e-6 (relative) short of the root (molloy2014: up to 2.4e-6 for ML); PM
# uses uniroot with tol = 1e-12. metafor's ll0check keeps its default tol (.Machine$double.eps^0.25). Exhaustive cases store a deterministic
# sample of rows (every `stride`-th row of metafor's order, plus the first 40 and the last) and
# summaries over all subsets (`summary`: mean, sd, quantiles 5/50/95 of each statistic over the
# fitted subsets, and the number of subsets of each size); random cases store every subset. Each stored
# row gives its 1-based row number in metafor's result, its inclusion pattern (`incl`: one character
# per effect, "1" = included, effect 1 first), k, estimate, tau2, I2, H2, QE and whether metafor
# fitted it (`fit`).

DATA_DIR <- file.path("tests", "reference", "data")

cohen <- metadat::dat.cohen1981[, c("study", "ni", "ri")]
write_csv17(cohen, file.path(DATA_DIR, "cohen1981.csv"))
# tests/reference/data/mcdaniel1994.csv (all columns of metadat::dat.mcdaniel1994) is written by
# refs_distribution.R, which make_refs.R runs first.

SETUP <- list(
  molloy2014 = "dat <- escalc(\"ZCOR\", ri=r, ni=n, data=read.csv(\"data/raw/molloy2014.csv\"))",
  cohen1981 = "dat <- escalc(\"ZCOR\", ri=ri, ni=ni, data=read.csv(\"tests/reference/data/cohen1981.csv\"))",
  mcdaniel1994 = "dat <- escalc(\"ZCOR\", ri=ri, ni=ni, data=read.csv(\"tests/reference/data/mcdaniel1994.csv\"))"
)
CONTROL <- list(
  FE = "",
  DL = "",
  REML = ", control=list(threshold=1e-15, maxiter=100000)",
  PM = ", control=list(tol=1e-12)"
)
STATS <- c("estimate", "tau2", "I2", "H2", "QE")

summarise <- function(g) {
  ok <- g$res[g$fit, ]
  out <- list(n_fit = nrow(ok))
  for (s in STATS) {
    x <- ok[[s]]
    out[[s]] <- list(mean = mean(x), sd = sd(x), q05 = unname(quantile(x, 0.05)),
                     q50 = unname(quantile(x, 0.5)), q95 = unname(quantile(x, 0.95)))
  }
  out$n_per_k <- as.integer(table(factor(g$res$k, levels = seq_len(g$k))))
  out
}

gosh_case <- function(ds, method, subsets = NULL, seed = NULL, stride = NULL) {
  env <- new.env()
  eval(parse(text = SETUP[[ds]]), envir = env)
  model <- sprintf("res <- rma(yi, vi, data=dat, method=\"%s\"%s)", method, CONTROL[[method]])
  eval(parse(text = model), envir = env)
  # gosh() lists all subsets when there are at most `subsets` of them (by default at most 10^6, so k = 20
  # would get a random million): asking for all 2^k - 1 makes every case with subsets = NULL exhaustive
  call <- if (is.null(subsets)) sprintf("g <- gosh(res, subsets=%d, progbar=FALSE)", 2^env$res$k - 1) else
    sprintf("g <- gosh(res, subsets=%d, seed=%d, progbar=FALSE)", subsets, seed)
  started <- proc.time()[["elapsed"]]
  out <- run_collecting_warnings(call, env)
  elapsed <- proc.time()[["elapsed"]] - started
  g <- env$g
  n <- nrow(g$res)
  rows <- if (is.null(stride)) seq_len(n) else sort(unique(c(seq_len(min(40, n)), seq(1, n, by = stride), n)))
  incl <- apply(g$incl[rows, , drop = FALSE], 1, function(r) paste(as.integer(r), collapse = ""))
  message(sprintf("gosh %s %s: %d subsets in %.1f s, %d not fitted", ds, method, n, elapsed, sum(!g$fit)))
  case <- list(
    setup = SETUP[[ds]], model = model, call = call, method = method, k = g$k, n_subsets = n,
    exhaustive = is.null(subsets), stride = if (is.null(stride)) NULL else stride,
    rows = rows, incl = I(unname(incl)), k_subset = as.integer(g$res$k[rows]),
    estimate = g$res$estimate[rows], tau2 = g$res$tau2[rows], I2 = g$res$I2[rows], H2 = g$res$H2[rows],
    QE = g$res$QE[rows], fit = I(unname(g$fit[rows])), warnings = out$warnings
  )
  if (is.null(subsets)) case$summary <- summarise(g)
  dump <- Sys.getenv("GOSH_DUMP_DIR")  # optional: every subset as CSV, for a full comparison by hand
  if (nzchar(dump)) {
    all_incl <- apply(g$incl, 1, function(r) paste(as.integer(r), collapse = ""))
    write.csv(data.frame(incl = all_incl, g$res, fit = g$fit), file.path(dump, sprintf("%s_%s.csv", ds, method)),
              row.names = FALSE)
  }
  case
}

cases <- list()
cases[["gosh/molloy2014/FE"]] <- gosh_case("molloy2014", "FE", stride = 97)
cases[["gosh/molloy2014/REML"]] <- gosh_case("molloy2014", "REML", stride = 97)
cases[["gosh/cohen1981/FE"]] <- gosh_case("cohen1981", "FE", stride = 997)
cases[["gosh/cohen1981/DL"]] <- gosh_case("cohen1981", "DL", stride = 997)
cases[["gosh_random/cohen1981/REML"]] <- gosh_case("cohen1981", "REML", subsets = 1000, seed = 20261121)
cases[["gosh_random/cohen1981/PM"]] <- gosh_case("cohen1981", "PM", subsets = 1000, seed = 20261121)
cases[["gosh_random/mcdaniel1994/REML"]] <- gosh_case("mcdaniel1994", "REML", subsets = 400, seed = 20261121)
write_ref("gosh", cases)
