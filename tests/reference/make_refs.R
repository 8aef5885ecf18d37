# Regenerate every reference fixture: Rscript tests/reference/make_refs.R (from the repository root).
# R and packages from the system package manager:
#   apt-get install r-base-core r-cran-metafor r-cran-metadat r-cran-lme4 r-cran-lmertest r-cran-clubsandwich \
#     r-cran-jsonlite r-cran-gsl r-cran-numderiv r-cran-pbkrtest
# refs_bias.R takes ~13 min (metafor refits k = 401 leave-one-out/influence/baujat/cumul twice).
# Each tests/reference/refs_<topic>.R writes tests/reference/<topic>.json; the Python tests read only the JSON.
source(file.path("tests", "reference", "common.R"))
for (script in sort(Sys.glob(file.path("tests", "reference", "refs_*.R")))) {
  message("running ", script)
  local(source(script, local = TRUE))
}
