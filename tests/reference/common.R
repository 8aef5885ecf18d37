# Shared helpers for the reference scripts: versions and a JSON writer with 17 significant digits.
# Sourced by make_refs.R before every refs_<topic>.R script; run from the repository root.
suppressPackageStartupMessages({
  library(metafor)
  library(jsonlite)
})

# Evaluate `code` (a string) in `env`, collecting warnings instead of printing them, so each fixture
# case can store the warnings R gave next to its values.
run_collecting_warnings <- function(code, env) {
  warns <- character()
  value <- withCallingHandlers(
    eval(parse(text = code), envir = env),
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    }
  )
  list(value = value, warnings = I(unique(warns)))
}

ref_versions <- function(extra = character()) {
  pkgs <- unique(c("metafor", "metadat", "jsonlite", extra))
  out <- list(R = R.version.string)
  for (p in pkgs) out[[p]] <- as.character(packageVersion(p))
  out
}

# jsonlite prints at most 15 significant digits, so numbers are formatted here with 17 (enough to
# round-trip any double) and inserted verbatim. Matrices become lists of rows; NA and NaN become null.
num17 <- function(x) {
  if (is.matrix(x)) return(lapply(seq_len(nrow(x)), function(i) num17(unname(x[i, ]))))
  s <- ifelse(is.finite(x), sprintf("%.17g", x), ifelse(is.na(x), "null", ifelse(x > 0, "\"Inf\"", "\"-Inf\"")))
  if (length(x) == 1 && is.null(names(x))) return(structure(s, class = "json"))
  if (!is.null(names(x))) return(lapply(setNames(as.list(s), names(x)), function(v) structure(v, class = "json")))
  structure(paste0("[", paste(s, collapse = ","), "]"), class = "json")
}
as_ref <- function(x) {
  if (is.list(x)) return(lapply(x, as_ref))
  if (is.numeric(x)) return(num17(x))
  x
}

# Write `cases` (a named list; each case holds the R call that produced it under `call`) to
# tests/reference/<topic>.json together with the versions used and the generating script.
write_ref <- function(topic, cases, extra_pkgs = character()) {
  doc <- list(
    generated_by = sprintf("tests/reference/refs_%s.R (via tests/reference/make_refs.R)", topic),
    versions = ref_versions(extra_pkgs),
    cases = cases
  )
  path <- file.path("tests", "reference", paste0(topic, ".json"))
  writeLines(toJSON(as_ref(doc), json_verbatim = TRUE, auto_unbox = TRUE, pretty = TRUE, na = "null", null = "null"), path)
  message("wrote ", path)
}

# One lmerTest contrast (L'beta) with Satterthwaite df, as refs_lmm.R and refs_sessions.R store it (needs lmerTest).
contrast_row <- function(fit, L) {
  r <- contest1D(fit, L, confint = TRUE, level = 0.95)
  list(L = unname(L), estimate = r$Estimate, se = r[["Std. Error"]], df = r$df, t = r[["t value"]],
       pval = r[["Pr(>|t|)"]], ci_lb = r$lower, ci_ub = r$upper)
}

# Data written with 17 significant digits (15 when that already round-trips, so that e.g. 0.118 stays 0.118), so
# that Python reads back exactly the doubles R fitted.
write_csv17 <- function(df, path) {
  out <- df
  for (nm in names(out)) if (is.double(out[[nm]])) {
    x <- out[[nm]]
    s15 <- sprintf("%.15g", x)
    out[[nm]] <- ifelse(as.numeric(s15) == x, s15, sprintf("%.17g", x))
  }
  write.csv(out, path, row.names = FALSE, quote = which(vapply(df, is.character, logical(1))), na = "")
  message("wrote ", path)
}
