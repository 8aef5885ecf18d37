r"""The written methods-and-results section of a dataset, generated from its tables.

metafor's ``reporter()`` writes such a text only for the simplest model; here every model the pipeline
fitted has its paragraph, and every number is read from the CSV tables the pipeline wrote (nothing is
recomputed, so the text and the tables cannot disagree; a test checks several numbers against the CSVs).
Sections whose table is absent (a dataset without ``study_id`` has no three-level model, a stage that was
not configured has no table) are left out, so the text describes exactly what was done.

Numbers follow APA style (:mod:`alliancemeta.report.numbers`).  r² is the share of outcome variance the
pooled correlation accounts for — the "about 7% of outcome variance" that readers of the alliance
literature quote.  SYNTHETIC data are marked in the first line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alliancemeta.core.settings import BayesSettings, Dataset, MetaSettings
from alliancemeta.report.numbers import (
    bounded,
    count,
    interval,
    level_pct,
    num,
    p_text,
    percent,
    small,
)

ESTIMATOR_NAMES = {
    "FE": ("equal-effects (fixed-effect) model", "Hedges & Olkin, 1985"),
    "DL": ("DerSimonian–Laird", "DerSimonian & Laird, 1986"),
    "HE": ("Hedges", "Hedges & Olkin, 1985"),
    "HS": ("Hunter–Schmidt", "Hunter & Schmidt, 2004"),
    "SJ": ("Sidik–Jonkman", "Sidik & Jonkman, 2005"),
    "ML": ("maximum-likelihood", "Viechtbauer, 2005"),
    "REML": ("restricted maximum-likelihood (REML)", "Viechtbauer, 2005"),
    "EB": ("empirical Bayes", "Morris, 1983"),
    "PM": ("Paule–Mandel", "Paule & Mandel, 1982"),
}
TEST_TEXT = {
    "knha": "Knapp–Hartung inference (t with k − 1 degrees of freedom and a rescaled standard error; "
    "Knapp & Hartung, 2003)",
    "t": "t-based inference with k − 1 degrees of freedom",
    "z": "Wald z inference",
}

REFERENCES = {
    "Begg & Mazumdar, 1994": "Begg, C. B., & Mazumdar, M. (1994). Operating characteristics of a rank correlation "
    "test for publication bias. *Biometrics, 50*(4), 1088–1101.",
    "Borenstein et al., 2009": "Borenstein, M., Hedges, L. V., Higgins, J. P. T., & Rothstein, H. R. (2009). "
    "*Introduction to meta-analysis*. Wiley.",
    "Cheung, 2014": "Cheung, M. W.-L. (2014). Modeling dependent effect sizes with three-level meta-analyses: A "
    "structural equation modeling approach. *Psychological Methods, 19*(2), 211–229.",
    "DerSimonian & Laird, 1986": "DerSimonian, R., & Laird, N. (1986). Meta-analysis in clinical trials. "
    "*Controlled Clinical Trials, 7*(3), 177–188.",
    "Duval & Tweedie, 2000": "Duval, S., & Tweedie, R. (2000). Trim and fill: A simple funnel-plot-based method of "
    "testing and adjusting for publication bias in meta-analysis. *Biometrics, 56*(2), 455–463.",
    "Egger et al., 1997": "Egger, M., Davey Smith, G., Schneider, M., & Minder, C. (1997). Bias in meta-analysis "
    "detected by a simple, graphical test. *BMJ, 315*(7109), 629–634.",
    "Fisher, 1921": 'Fisher, R. A. (1921). On the "probable error" of a coefficient of correlation deduced from a '
    "small sample. *Metron, 1*, 3–32.",
    "Bartoš et al., 2023": "Bartoš, F., Maier, M., Wagenmakers, E.-J., Doucouliagos, H., & Stanley, T. D. (2023). "
    "Robust Bayesian meta-analysis: Model-averaging across complementary publication bias adjustment methods. "
    "*Research Synthesis Methods, 14*(1), 99–116.",
    "Gronau et al., 2017": "Gronau, Q. F., Van Erp, S., Heck, D. W., Cesario, J., Jonas, K. J., & Wagenmakers, E.-J. "
    "(2017). A Bayesian model-averaged meta-analysis of the power pose effect with informed and default priors. "
    "*Comprehensive Results in Social Psychology, 2*(1), 123–138.",
    "Hedges & Olkin, 1985": "Hedges, L. V., & Olkin, I. (1985). *Statistical methods for meta-analysis*. Academic "
    "Press.",
    "Higgins & Thompson, 2002": "Higgins, J. P. T., & Thompson, S. G. (2002). Quantifying heterogeneity in a "
    "meta-analysis. *Statistics in Medicine, 21*(11), 1539–1558.",
    "Higgins et al., 2009": "Higgins, J. P. T., Thompson, S. G., & Spiegelhalter, D. J. (2009). A re-evaluation of "
    "random-effects meta-analysis. *Journal of the Royal Statistical Society: Series A, 172*(1), 137–159.",
    "Hunter & Schmidt, 2004": "Hunter, J. E., & Schmidt, F. L. (2004). *Methods of meta-analysis* (2nd ed.). Sage.",
    "Knapp & Hartung, 2003": "Knapp, G., & Hartung, J. (2003). Improved tests for a random effects meta-regression "
    "with a single covariate. *Statistics in Medicine, 22*(17), 2693–2710.",
    "Konstantopoulos, 2011": "Konstantopoulos, S. (2011). Fixed effects and variance components estimation in "
    "three-level meta-analysis. *Research Synthesis Methods, 2*(1), 61–76.",
    "Morris, 1983": "Morris, C. N. (1983). Parametric empirical Bayes inference: Theory and applications. *Journal of "
    "the American Statistical Association, 78*(381), 47–55.",
    "Paule & Mandel, 1982": "Paule, R. C., & Mandel, J. (1982). Consensus values and weighting factors. *Journal of "
    "Research of the National Bureau of Standards, 87*(5), 377–385.",
    "Pustejovsky & Tipton, 2018": "Pustejovsky, J. E., & Tipton, E. (2018). Small-sample methods for cluster-robust "
    "variance estimation and hypothesis testing in fixed effects models. *Journal of Business & Economic "
    "Statistics, 36*(4), 672–683.",
    "Pustejovsky & Tipton, 2022": "Pustejovsky, J. E., & Tipton, E. (2022). Meta-analysis with robust variance "
    "estimation: Expanding the range of working models. *Prevention Science, 23*(3), 425–438.",
    "Viechtbauer & López-López, 2022": "Viechtbauer, W., & López-López, J. A. (2022). Location-scale models for "
    "meta-analysis. *Research Synthesis Methods, 13*(6), 697–715.",
    "Mathur & VanderWeele, 2019": "Mathur, M. B., & VanderWeele, T. J. (2019). New metrics for meta-analyses of "
    "heterogeneous effects. *Statistics in Medicine, 38*(8), 1336–1342.",
    "Pustejovsky et al., 2025": "Pustejovsky, J. E., Citkowicz, M., & Joshi, M. (2025). Estimation and inference for "
    "step-function selection models in meta-analysis with dependent effects [Preprint]. "
    "https://doi.org/10.31222/osf.io/qg5x6_v1",
    "Citkowicz & Vevea, 2017": "Citkowicz, M., & Vevea, J. L. (2017). A parsimonious weight function for modeling "
    "publication bias. *Psychological Methods, 22*(1), 28–41.",
    "Asparouhov et al., 2018": "Asparouhov, T., Hamaker, E. L., & Muthén, B. (2018). Dynamic structural equation "
    "models. *Structural Equation Modeling, 25*(3), 359–388.",
    "McNeish & Hamaker, 2020": "McNeish, D., & Hamaker, E. L. (2020). A primer on two-level dynamic structural "
    "equation models for intensive longitudinal data in Mplus. *Psychological Methods, 25*(5), 610–635.",
    "Olkin et al., 2012": "Olkin, I., Dahabreh, I. J., & Trikalinos, T. A. (2012). GOSH – a graphical display of "
    "study heterogeneity. *Research Synthesis Methods, 3*(3), 214–223.",
    "Wang & Lee, 2019": "Wang, C.-C., & Lee, W.-C. (2019). A simple method to estimate prediction intervals and "
    "predictive distributions: Summarizing meta-analyses beyond means and confidence intervals. *Research Synthesis "
    "Methods, 10*(2), 255–266.",
    "Raudenbush, 2009": "Raudenbush, S. W. (2009). Analyzing effect sizes: Random-effects models. In H. Cooper, "
    "L. V. Hedges, & J. C. Valentine (Eds.), *The handbook of research synthesis and meta-analysis* (2nd ed., "
    "pp. 295–315). Russell Sage Foundation.",
    "Rosenthal, 1979": "Rosenthal, R. (1979). The file drawer problem and tolerance for null results. "
    "*Psychological Bulletin, 86*(3), 638–641.",
    "Sidik & Jonkman, 2005": "Sidik, K., & Jonkman, J. N. (2005). Simple heterogeneity variance estimation for "
    "meta-analysis. *Journal of the Royal Statistical Society: Series C, 54*(2), 367–384.",
    "Stanley & Doucouliagos, 2014": "Stanley, T. D., & Doucouliagos, H. (2014). Meta-regression approximations to "
    "reduce publication selection bias. *Research Synthesis Methods, 5*(1), 60–78.",
    "Vevea & Hedges, 1995": "Vevea, J. L., & Hedges, L. V. (1995). A general linear model for estimating effect size "
    "in the presence of publication bias. *Psychometrika, 60*(3), 419–435.",
    "Viechtbauer, 2005": "Viechtbauer, W. (2005). Bias and efficiency of meta-analytic variance estimators in the "
    "random-effects model. *Journal of Educational and Behavioral Statistics, 30*(3), 261–293.",
    "Viechtbauer, 2007": "Viechtbauer, W. (2007). Confidence intervals for the amount of heterogeneity in "
    "meta-analysis. *Statistics in Medicine, 26*(1), 37–52.",
    "Viechtbauer, 2010": "Viechtbauer, W. (2010). Conducting meta-analyses in R with the metafor package. *Journal of "
    "Statistical Software, 36*(3), 1–48.",
    "Viechtbauer & Cheung, 2010": "Viechtbauer, W., & Cheung, M. W.-L. (2010). Outlier and influence diagnostics for "
    "meta-analysis. *Research Synthesis Methods, 1*(2), 112–125.",
    "Baldwin et al., 2007": "Baldwin, S. A., Wampold, B. E., & Imel, Z. E. (2007). Untangling the alliance-outcome "
    "correlation: Exploring the relative importance of therapist and patient variability in the alliance. *Journal "
    "of Consulting and Clinical Psychology, 75*(6), 842–852.",
    "Falkenström et al., 2017": "Falkenström, F., Finkel, S., Sandell, R., Rubel, J. A., & Holmqvist, R. (2017). "
    "Dynamic models of individual change in psychotherapy process research. *Journal of Consulting and Clinical "
    "Psychology, 85*(6), 537–549.",
    "Flückiger et al., 2020": "Flückiger, C., Rubel, J., Del Re, A. C., Horvath, A. O., Wampold, B. E., Crits-"
    "Christoph, P., Atzil-Slonim, D., Compare, A., Falkenström, F., Ekeblad, A., Errázuriz, P., Fisher, H., "
    "Hoffart, A., Huppert, J. D., Kivity, Y., Kumar, M., Lutz, W., Muran, J. C., Strunk, D. R., ... Barber, J. P. "
    "(2020). The reciprocal relationship between alliance and early treatment symptoms: A two-stage individual "
    "participant data meta-analysis. *Journal of Consulting and Clinical Psychology, 88*(9), 829–843.",
    "Bates et al., 2015": "Bates, D., Mächler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects "
    "models using lme4. *Journal of Statistical Software, 67*(1), 1–48.",
}


@dataclass(frozen=True)
class Summary:
    """A written section: the full Markdown text and its one-paragraph headline."""

    markdown: str
    headline: str


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _cite(*keys: str) -> str:
    return "; ".join(keys)


def _references(text: str) -> str:
    used = sorted((key for key in REFERENCES if key in text), key=lambda k: REFERENCES[k])
    return "\n".join(f"- {REFERENCES[k]}" for k in used)


def _first_line(dataset: Dataset) -> str:
    if dataset.synthetic:
        return (
            "**SYNTHETIC data** — simulated by a committed, seeded generator: the numbers below demonstrate "
            "the pipeline and are not evidence about the alliance.\n\n"
        )
    return ""


def sample_size(studies: pd.DataFrame) -> float:
    """Total N: the sum of ``n`` over studies, each study's largest sample counted once (NaN without ``n``)."""
    if "n" not in studies.columns or studies["n"].isna().all():
        return np.nan
    if "study_id" in studies.columns:
        return float(studies.groupby("study_id")["n"].max().sum())
    return float(studies["n"].sum())


# --------------------------------------------------------------------------------------------------
# study level
# --------------------------------------------------------------------------------------------------


def _pooled_sentence(row: pd.Series, pct: str) -> str:
    return f"r = {bounded(row['r'])}, {pct} CI {interval(row['r_ci_lb'], row['r_ci_ub'])}, {p_text(row['pval'])}"


def _headline_study(
    tables: Mapping[str, pd.DataFrame], studies: pd.DataFrame, meta: MetaSettings, predictor: str, outcome: str
) -> str:
    pct = level_pct(meta.level)
    head = tables["random_effects"].iloc[0]
    k, n = int(head["k"]), sample_size(studies)
    n_text = f" (N = {count(n)})" if np.isfinite(n) else ""
    r2 = float(head["r"]) ** 2
    test_name = TEST_TEXT.get(head["test"], head["test"]).split(" (")[0]
    text = (
        f"Across k = {k} effect sizes{n_text}, the pooled correlation between {predictor} and {outcome} was "
        f"{_pooled_sentence(head, pct)} ({head['estimator']}, {test_name}); "
        f"the {pct} prediction interval for the true correlation of a new study was "
        f"{interval(head['r_pi_lb'], head['r_pi_ub'])}. "
    )
    if head["estimator"] != "FE":
        text += (
            f"Heterogeneity: τ = {small(np.sqrt(head['tau2']))} (τ² = {small(head['tau2'])}, {pct} CI "
            f"{interval(head['tau2_ci_lb'], head['tau2_ci_ub'], small)}), I² = {percent(head['I2'])} ({pct} CI "
            f"{interval(head['I2_ci_lb'], head['I2_ci_ub'], percent)}), Q({int(head['Q_df'])}) = {num(head['Q'])}, "
            f"{p_text(head['Q_pval'])}. "
        )
    text += (
        f"With r² = {bounded(r2, 3)}, {predictor} accounts for about {percent(100 * r2, 1)} of the variance "
        f"in {outcome}."
    )
    return text


def _methods_study(
    tables, studies, dataset: Dataset, meta: MetaSettings, bayes: BayesSettings | None, predictor: str, outcome: str
) -> list[str]:
    pct = level_pct(meta.level)
    head = tables["random_effects"].iloc[0]
    k, n = int(head["k"]), sample_size(studies)
    paras = []
    nested = "multilevel" in tables
    n_studies = int(tables["multilevel"]["n_studies"].iloc[0]) if nested else None
    data = f"The dataset holds k = {k} correlations between {predictor} and {outcome}"
    data += f" from {n_studies} studies" if nested else ""
    if np.isfinite(n):
        data += f" (N = {count(n)} participants" + (", each study's largest sample counted once)" if nested else ")")
    data += (
        ". Correlations were transformed to Fisher's z (y = atanh r, v = 1/(n − 3)) for pooling and "
        f"back-transformed to r for reporting ({_cite('Fisher, 1921')}). Positive r means that a higher "
        f"{predictor} went with a better {outcome}."
    )
    paras.append(data)
    name, ref = ESTIMATOR_NAMES.get(meta.method, (meta.method, ""))
    others = [e for e in meta.estimators[1:]]
    rem = (
        f"The headline model is a random-effects model with the {name} estimator of τ² ({ref}) and "
        f"{TEST_TEXT.get(meta.test, meta.test)}; intervals are {pct} confidence intervals, with a {pct} "
        f"prediction interval for the true effect of a new study ({_cite('Higgins et al., 2009')}). "
        f"Heterogeneity is reported as τ², I² ({_cite('Higgins & Thompson, 2002')}) and Cochran's Q, with Q-profile "
        f"confidence intervals for τ² and I² ({_cite('Viechtbauer, 2007')})."
    )
    if others or len(meta.tests) > 1:
        rem += (
            " The other configured estimators ("
            + ", ".join(others or ["none"])
            + ") and tests ("
            + ", ".join(meta.tests)
            + ") serve as sensitivity analyses."
        )
    paras.append(rem)
    if nested:
        paras.append(
            f"Because studies contributed several effect sizes, a three-level model (effect sizes within studies; "
            f"{_cite('Konstantopoulos, 2011', 'Cheung, 2014')}) was fitted by REML, with model-based and "
            f"cluster-robust CR2 inference with Satterthwaite degrees of freedom "
            f"({_cite('Pustejovsky & Tipton, 2018')}); as a simpler "
            f"alternative, effect sizes were aggregated within studies assuming a sampling correlation of "
            f"ρ = {bounded(meta.aggregate_rho)} ({_cite('Borenstein et al., 2009')}) and then pooled."
        )
    if "che" in tables:
        rhos = ", ".join(bounded(r) for r in tables["che"]["rho"].unique())
        paras.append(
            f"A correlated-and-hierarchical-effects (CHE) working model ({_cite('Pustejovsky & Tipton, 2022')}) "
            f"assumed correlations of ρ = {rhos} between the sampling errors of effect sizes from one study, with "
            "random effects for studies and for effect sizes within studies and CR2 robust inference, so that "
            "the dependence of the result on the assumed correlation can be seen."
        )
    if "location_scale_tests" in tables:
        paras.append(
            f"Location-scale models ({_cite('Viechtbauer & López-López, 2022')}) tested whether the heterogeneity "
            "itself differs by moderator (log τ² linear in the moderator; Wald test QS and a likelihood-ratio test "
            "against a constant τ²)."
        )
    if "distribution" in tables:
        qs = ", ".join(bounded(q) for q in tables["distribution"]["threshold"].unique())
        paras.append(
            f"The share of true correlations above r = {qs} was estimated from the normal random-effects model and "
            f"from calibrated study estimates, with bootstrap intervals "
            f"({_cite('Mathur & VanderWeele, 2019', 'Wang & Lee, 2019')})."
        )
    if "moderator_tests" in tables:
        mods = [m for m in tables["moderator_tests"]["moderator"].unique() if "+" not in m]
        paras.append(
            "Moderators (" + ", ".join(mods) + ") were tested one at a time and jointly in mixed-effects "
            f"meta-regressions with the headline estimator and test; R² is the proportional reduction of τ² "
            f"({_cite('Raudenbush, 2009')})."
        )
    if "publication_bias" in tables:
        paras.append(
            f"Small-study effects and publication bias were examined with Egger's regression test "
            f"({_cite('Egger et al., 1997')}), the rank correlation test ({_cite('Begg & Mazumdar, 1994')}), trim and "
            f"fill ({_cite('Duval & Tweedie, 2000')}), PET and PEESE ({_cite('Stanley & Doucouliagos, 2014')}), the "
            f"three-parameter selection model ({_cite('Vevea & Hedges, 1995')}) and Rosenthal's fail-safe N "
            f"({_cite('Rosenthal, 1979')})."
        )
    if "selection_models" in tables:
        text = (
            "Selection models with every weight function of metafor's selmodel() were fitted by maximum likelihood to "
            f"all effect sizes: step functions at one-sided p = .025 and .025/.50 ({_cite('Vevea & Hedges, 1995')}), "
            f"the beta function ({_cite('Citkowicz & Vevea, 2017')}), half-normal, negative-exponential, logistic "
            "and power weights, each with a likelihood-ratio test against no selection"
        )
        if tables["selection_models"]["type"].str.startswith("clustered").any():
            text += (
                f"; because studies contributed several effect sizes, the step-function model for dependent effects "
                f"({_cite('Pustejovsky et al., 2025')}) was fitted as well, with cluster-robust standard errors and "
                "cluster-bootstrap confidence intervals"
            )
        paras.append(text + ".")
    if "influence" in tables:
        paras.append(
            "Influence was assessed by leaving out each effect size in turn (studentized residuals, DFFITS, Cook's "
            f"distances, covariance ratios; {_cite('Viechtbauer & Cheung, 2010')}) and by a cumulative meta-analysis"
            + ("; for the three-level model, each study was left out in turn." if nested else ".")
        )
    if "gosh_summary" in tables:
        g = tables["gosh_summary"]
        if g["n_subsets"].max() > 0:
            how = "every subset" if (g["subsets"] == "all").all() else f"{count(g['n_subsets'].max())} random subsets"
            paras.append(
                f"A GOSH analysis ({_cite('Olkin et al., 2012')}) fitted the equal-effects and the headline "
                f"random-effects model to {how} of the effect sizes."
            )
    if "bayes" in tables and bayes is not None:
        paras.append(
            f"A Bayesian random-effects model used the priors μ ~ {_prior(bayes.prior_mu)} and τ ~ "
            f"{_prior(bayes.prior_tau)} on the Fisher-z scale; it was sampled with nutpie "
            f"({bayes.sampler.chains} chains "
            f"of {bayes.sampler.draws} draws; every run had to reach R̂ ≤ 1.01, a bulk effective sample size of at "
            "least 400 and no divergent transitions) and checked against its exact posterior computed by "
            "one-dimensional quadrature over τ. "
            + _capitalised(
                ("meta-regressions, " if "moderator_tests" in tables else "")
                + ("the three-level model, " if nested else "")
                + "the sensitivity to the prior "
                f"and Bayesian model averaging over effect × heterogeneity ({_cite('Gronau et al., 2017')}) complete "
                f"it; intervals are {pct} equal-tailed credible intervals."
            )
        )
    if "bayes_model_averaging" in tables and bayes is not None and bayes.robma["enabled"]:
        paras.append(_robma_methods(bayes, nested))
    paras.append(
        "All analyses were run with the alliancemeta pipeline, whose frequentist results agree with R's metafor "
        f"({_cite('Viechtbauer, 2010')}) to a relative 10⁻⁶."
    )
    return paras


def _robma_methods(bayes: BayesSettings, nested: bool) -> str:
    """How the RoBMA-PSMA ensemble was specified and computed."""
    robma = bayes.robma
    n_wf = len(robma["weightfunctions"]) if "selection" in robma["components"] else 0
    parts = [f"{n_wf} step-function selection models"] if n_wf else []
    parts += [c.upper() for c in ("pet", "peese") if c in robma["components"]]
    return (
        "Robust Bayesian model averaging (RoBMA-PSMA; "
        f"{_cite('Bartoš et al., 2023')}) crossed the presence or absence of an effect and of heterogeneity with no "
        f"publication bias or {', '.join(parts)}, with RoBMA's default priors rescaled from Cohen's d to Fisher z "
        f"(μ ~ {_prior(robma['prior_mu'])}, τ ~ {_prior(robma['prior_tau'])})"
        + ("; effects nested in studies entered every model at three levels" if nested else "")
        + ". Marginal likelihoods were computed by adaptive quadrature (bridge sampling where a model needed MCMC), "
        "each with an error estimate reported in the table."
    )


def _prior(spec: Mapping) -> str:
    params = ", ".join(f"{v:g}" for k, v in spec.items() if k not in ("dist", "on") and isinstance(v, int | float))
    name = {"normal": "Normal", "halfnormal": "Half-Normal", "halfcauchy": "Half-Cauchy",
            "halfstudent_t": "Half-Student-t", "inversegamma": "Inverse-Gamma", "uniform": "Uniform"}.get(
                spec.get("dist"), str(spec.get("dist")))  # fmt: skip
    return f"{name}({params})" + (" on τ²" if spec.get("on") == "tau2" else "")


def _results_study(tables, meta: MetaSettings) -> list[str]:
    pct = level_pct(meta.level)
    paras = []
    re = tables["random_effects"]
    if len(re) > 1:
        paras.append(
            f"Across the {len(re)} combinations of estimator and test the pooled correlation ranged from "
            f"r = {bounded(re['r'].min())} to {bounded(re['r'].max())}, and the {pct} confidence limits from "
            f"{bounded(re['r_ci_lb'].min())} to {bounded(re['r_ci_ub'].max())}."
        )
    if "multilevel" in tables:
        ml = tables["multilevel"].set_index("test")
        row = ml.loc["cr2"] if "cr2" in ml.index else ml.iloc[0]
        z = ml.iloc[0]
        text = (
            f"The three-level model gave r = {bounded(z['r'])}, {pct} CI {interval(z['r_ci_lb'], z['r_ci_ub'])} "
            f"(model-based {ml.index[0]}); with CR2 robust standard errors {interval(row['r_ci_lb'], row['r_ci_ub'])}. "
            f"Between-study variance σ²(study) = {small(z['sigma2_study'])}, within-study variance "
            f"σ²(within) = {small(z['sigma2_within'])}"
        )
        if "I2" in ml.columns:
            text += (
                f"; of the total I² = {percent(z['I2'])}, {percent(z['I2_study'])} lay between studies and "
                f"{percent(z['I2_within'])} between effect sizes within studies"
            )
        paras.append(text + ".")
    if "random_effects_aggregated" in tables:
        agg = tables["random_effects_aggregated"].iloc[0]
        paras.append(
            f"Aggregated within studies (k = {int(agg['k'])} studies), the pooled correlation was "
            f"{_pooled_sentence(agg, pct)}."
        )
    if "che" in tables:
        che = tables["che"]
        cr2 = che[che["test"] == "cr2"].dropna(subset=["r"])
        if len(cr2):
            mid = cr2.iloc[len(cr2) // 2]
            paras.append(
                f"Under the CHE working model with CR2 inference, r = {bounded(mid['r'])}, {pct} CI "
                f"{interval(mid['r_ci_lb'], mid['r_ci_ub'])} at ρ = {bounded(mid['rho'])}; across "
                f"ρ = {', '.join(bounded(r) for r in cr2['rho'])} the pooled r ranged from {bounded(cr2['r'].min())} "
                f"to {bounded(cr2['r'].max())}."
            )
    if "location_scale_tests" in tables:
        ls = tables["location_scale_tests"].dropna(subset=["LRT"])
        if len(ls):
            alpha = 1 - meta.level
            hits = ls[ls["LRT_pval"] < alpha]
            parts = [f"{r['moderator']} (LRT = {num(r['LRT'])}, {p_text(r['LRT_pval'])})" for _, r in hits.iterrows()]
            paras.append(
                (
                    "Heterogeneity differed by " + "; ".join(parts) + "."
                    if parts
                    else f"No moderator changed the heterogeneity at p < {bounded(alpha)} (location-scale models)."
                )
                + f" {len(ls)} moderator(s) were tested."
            )
    if "distribution" in tables:
        dist = tables["distribution"]
        parts = []
        for q, part in dist.groupby("threshold", sort=True):
            cal = part[part["method"] == "calibrated"]
            nor = part[part["method"] == "normal"]
            if len(cal) and np.isfinite(cal["share"].iloc[0]):
                c, n = cal.iloc[0], nor.iloc[0] if len(nor) else None
                ci = interval(100 * c["ci_lb"], 100 * c["ci_ub"], percent)
                text = f"{percent(100 * c['share'])} {ci} above r = {bounded(q)}"
                if n is not None and np.isfinite(n["share"]):
                    text += f" (normal model: {percent(100 * n['share'])})"
                parts.append(text)
        if parts:
            paras.append("Of the true correlations, an estimated " + "; ".join(parts) + " (calibrated estimates).")
    if "moderator_tests" in tables:
        tests = tables["moderator_tests"]
        head = tests[tests["test"] == meta.test]
        parts, sig = [], []
        for _, t in head.iterrows():
            if not np.isfinite(t["QM"]):
                parts.append(f"{t['moderator']}: not estimable ({t.get('note', '')})")
                continue
            df2 = t.get("QM_ddf", np.inf)
            stat = f"F({int(t['QM_df'])}, {int(df2)})" if np.isfinite(df2) else f"Q_M({int(t['QM_df'])})"
            parts.append(
                f"{t['moderator']}: {stat} = {num(t['QM'])}, {p_text(t['QM_pval'])}, R² = {percent(t['R2'], 1)}"
            )
            if t["QM_pval"] < 1 - meta.level and "+" not in t["moderator"]:
                sig.append(t["moderator"])
        text = "Moderator tests — " + "; ".join(parts) + "."
        text += (
            " Moderators with p < " + bounded(1 - meta.level, 2) + ": " + ", ".join(sig) + "."
            if sig
            else " No single moderator reached p < " + bounded(1 - meta.level, 2) + "."
        )
        paras.append(text)
    if "publication_bias" in tables:
        b = tables["publication_bias"].set_index("method")
        parts = []
        if "egger" in b.index and np.isfinite(b.loc["egger", "statistic"]):
            stat = "t" if meta.test in ("t", "knha") else "z"
            parts.append(
                f"Egger's test gave {stat} = {num(b.loc['egger', 'statistic'])}, {p_text(b.loc['egger', 'pval'])}"
            )
        if "rank" in b.index and np.isfinite(b.loc["rank", "statistic"]):
            parts.append(
                f"the rank correlation Kendall's τ = {bounded(b.loc['rank', 'statistic'], 3)}, "
                f"{p_text(b.loc['rank', 'pval'])}"
            )
        if "trimfill" in b.index and np.isfinite(b.loc["trimfill", "estimate"]):
            tf = b.loc["trimfill"]
            parts.append(
                f"trim and fill imputed {int(tf['k0'])} effect size(s), adjusted r = "
                f"{bounded(np.tanh(tf['estimate']))} {interval(np.tanh(tf['ci_lb']), np.tanh(tf['ci_ub']))}"
            )
        for m, label in (("pet", "PET"), ("peese", "PEESE")):
            if m in b.index and np.isfinite(b.loc[m, "estimate"]):
                parts.append(
                    f"{label} r = {bounded(np.tanh(b.loc[m, 'estimate']))} "
                    f"{interval(np.tanh(b.loc[m, 'ci_lb']), np.tanh(b.loc[m, 'ci_ub']))}"
                )
        if "selection_3psm" in b.index and np.isfinite(b.loc["selection_3psm", "estimate"]):
            s = b.loc["selection_3psm"]
            parts.append(
                f"the three-parameter selection model χ²(1) = {num(s['statistic'])}, {p_text(s['pval'])}, "
                f"adjusted r = {bounded(np.tanh(s['estimate']))} {interval(np.tanh(s['ci_lb']), np.tanh(s['ci_ub']))}"
            )
        if "failsafe_rosenthal" in b.index and np.isfinite(b.loc["failsafe_rosenthal", "statistic"]):
            parts.append(f"the fail-safe N was {count(b.loc['failsafe_rosenthal', 'statistic'])}")
        if parts:
            text = "Publication bias: " + "; ".join(parts) + "."
            paras.append(text[0].upper() + text[1:])
    if "influence" in tables:
        inf = tables["influence"]
        n_inf = int(inf["influential"].fillna(False).astype(bool).sum()) if "influential" in inf else 0
        loo = np.tanh(inf["loo_estimate"].dropna())
        if loo.size:
            paras.append(
                f"Of the {len(inf)} effect sizes, {n_inf} were flagged as influential; leaving out any single "
                f"effect size moved the pooled r between {bounded(loo.min())} and {bounded(loo.max())}."
            )
    if "influence_multilevel" in tables:
        im = tables["influence_multilevel"]
        loo = np.tanh(im["loo_estimate"].dropna())
        if loo.size:
            paras.append(
                f"In the three-level model, {int(im['influential'].fillna(False).astype(bool).sum())} of "
                f"{len(im)} studies were influential; leaving out one study at a time gave r between "
                f"{bounded(loo.min())} and {bounded(loo.max())}."
            )
    if "selection_models" in tables:
        sm = tables["selection_models"].set_index("type")
        ok = sm[np.isfinite(sm["estimate"])]
        if len(ok):
            r_adj = np.tanh(ok["estimate"])
            text = (
                f"Across the {len(ok)} selection models that could be estimated, the selection-adjusted correlation "
                f"ranged from r = {bounded(r_adj.min())} to {bounded(r_adj.max())}"
            )
            for key, label in (("clustered_3psm", "the dependent-effects step-function model"),):
                if key in ok.index:
                    row = ok.loc[key]
                    text += (
                        f"; {label} gave r = {bounded(np.tanh(row['estimate']))} "
                        f"{interval(np.tanh(row['ci_lb']), np.tanh(row['ci_ub']))}"
                    )
            paras.append(text + ".")
    if "gosh_summary" in tables:
        g = tables["gosh_summary"]
        est = g[(g["statistic"] == "estimate") & (g["model"] != "FE") & (g["n_subsets"] > 0)]
        i2 = g[(g["statistic"] == "I2") & (g["model"] != "FE") & (g["n_subsets"] > 0)]
        if len(est) and len(i2):
            e, h = est.iloc[0], i2.iloc[0]
            paras.append(
                f"Across the {count(e['n_subsets'])} subsets of the GOSH analysis ({e['model']}), the middle 90% of "
                f"pooled correlations lay between r = {bounded(e['r_q05'])} and {bounded(e['r_q95'])} and of I² "
                f"between {h['q05']:.0f}% and {h['q95']:.0f}%."
            )
    if "bayes" in tables:
        bz = tables["bayes"]
        re_rows = bz[bz["model"] == "random_effects"].set_index("parameter")
        if {"r", "tau", "theta_new"} <= set(re_rows.index):
            r, tau, new = re_rows.loc["r"], re_rows.loc["tau"], re_rows.loc["theta_new"]
            text = (
                f"Bayesian random-effects model: posterior mean r = {bounded(r['mean'])}, {pct} CrI "
                f"{interval(r['eti_lb'], r['eti_ub'])}, P(r > .1) = {bounded(r['p_gt_0.1'], 3)}; τ = "
                f"{small(tau['mean'])} {interval(tau['eti_lb'], tau['eti_ub'], small)}; the correlation in a new "
                f"study {interval(np.tanh(new['eti_lb']), np.tanh(new['eti_ub']))}"
            )
            if "exact_mean" in r and np.isfinite(r["exact_mean"]):
                text += f" (exact posterior mean r = {bounded(r['exact_mean'], 3)})"
            paras.append(text + ".")
    if "bayes_model_averaging" in tables:
        bma = tables["bayes_model_averaging"].set_index("model")
        parts = []
        for comp in ("effect", "heterogeneity"):
            key = f"inclusion:{comp}"
            if key in bma.index and np.isfinite(bma.loc[key, "bf_inclusion"]):
                parts.append(
                    f"an {comp} BF = {_bf(bma.loc[key, 'bf_inclusion'])}"
                    if comp == "effect"
                    else f"heterogeneity BF = {_bf(bma.loc[key, 'bf_inclusion'])}"
                )
        if parts:
            paras.append("Bayesian model averaging gave inclusion Bayes factors for " + " and for ".join(parts) + ".")
        robma = _robma_sentence(bma, pct)
        if robma:
            paras.append(robma)
    return paras


def _robma_sentence(bma: pd.DataFrame, pct: str) -> str:
    """The RoBMA-PSMA result: inclusion BFs and the bias-adjusted against the unadjusted model-averaged r."""
    need = ("robma:inclusion:effect", "robma:inclusion:bias", "robma:model_averaged")
    if not all(k in bma.index for k in need):
        return ""
    bf = {c: bma.loc[f"robma:inclusion:{c}", "bf_inclusion"] for c in ("effect", "heterogeneity", "bias")
          if f"robma:inclusion:{c}" in bma.index}  # fmt: skip
    adj = bma.loc["robma:model_averaged"]
    text = (
        f"Averaging over effect, heterogeneity and publication bias (RoBMA-PSMA, {_cite('Bartoš et al., 2023')}), "
        f"the inclusion Bayes factors were {_bf(bf['effect'])} for an effect"
        + (f", {_bf(bf['heterogeneity'])} for heterogeneity" if "heterogeneity" in bf else "")
        + f" and {_bf(bf['bias'])} for publication bias (posterior probability "
        f"{bounded(bma.loc['robma:inclusion:bias', 'post_prob'], 3)}); the bias-adjusted model-averaged r was "
        f"{bounded(adj['r_mean'])}, {pct} CrI {interval(adj['r_eti_lb'], adj['r_eti_ub'])}"
    )
    if "robma:model_averaged_unadjusted" in bma.index:
        un = bma.loc["robma:model_averaged_unadjusted"]
        text += f", against {bounded(un['r_mean'])} {interval(un['r_eti_lb'], un['r_eti_ub'])} without adjustment"
    return text + "."


def _bf(x) -> str:
    x = float(x)
    if not np.isfinite(x):
        return "∞"
    if x >= 1000 or x < 0.001:
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{mantissa} × 10^{int(exponent)}"
    return num(x)


def study_summary(
    tables: Mapping[str, pd.DataFrame],
    studies: pd.DataFrame,
    dataset: Dataset,
    meta: MetaSettings,
    bayes: BayesSettings | None = None,
    predictor: str = "alliance",
    outcome: str = "outcome",
) -> Summary:
    """The methods-and-results text of a study-level dataset from its tables (name -> frame); ``predictor`` and
    ``outcome`` name what the correlations relate (config ``studies.NAME.predictor`` and ``.outcome``)."""
    headline = _headline_study(tables, studies, meta, predictor, outcome)
    methods = _methods_study(tables, studies, dataset, meta, bayes, predictor, outcome)
    results = [headline, *_results_study(tables, meta)]
    body = (
        _first_line(dataset)
        + f"# {dataset.label}: methods and results\n\n## Methods\n\n"
        + "\n\n".join(methods)
        + "\n\n## Results\n\n"
        + "\n\n".join(results)
        + "\n"
    )
    return Summary(body + "\n## References\n\n" + _references(body) + "\n", headline)


# --------------------------------------------------------------------------------------------------
# session level
# --------------------------------------------------------------------------------------------------

TERM_TEXT = {
    "alliance_within": "within-client (a session's alliance relative to the client's own average)",
    "alliance_between": "between-client (clients' average alliance)",
    "alliance_therapist": "between-therapist (therapists' average alliance)",
}


def _coef(row: pd.Series, pct: str) -> str:
    text = (
        f"b = {num(row['estimate'], 3)}, {pct} {'CrI' if row['engine'] == 'pymc' else 'CI'} "
        f"{interval(row['ci_lb'], row['ci_ub'], num, digits=3)}"
    )
    if row["engine"] != "pymc" and np.isfinite(row["pval"]):
        df = row.get("df", np.nan)
        text += (f", t({num(df, 1)})" if np.isfinite(df) else "") + f", {p_text(row['pval'])}"
    return text


def session_summary(
    tables: Mapping[str, pd.DataFrame], sessions: pd.DataFrame, dataset: Dataset, level: float
) -> Summary:
    """The methods-and-results text of a session-level dataset from its tables."""
    pct = level_pct(level)
    n_clients = sessions["client"].nunique()
    design = f"{count(len(sessions))} sessions of {count(n_clients)} clients"
    for col, word in (("therapist", "therapists"), ("site", "sites")):
        if col in sessions:
            design += f", {sessions[col].nunique()} {word}"
    methods = [
        f"The dataset holds {design}, with the alliance and the outcome rated session by session. The outcome was "
        "aligned so that positive coefficients mean that a stronger alliance goes with a better outcome. The "
        "alliance was decomposed into within-client, between-client and between-therapist parts "
        f"({_cite('Baldwin et al., 2007', 'Falkenström et al., 2017')}); linear mixed models were fitted by REML "
        f"({_cite('Bates et al., 2015')}) and, in parallel, as Bayesian models sampled with nutpie (R̂ ≤ 1.01, bulk "
        "ESS ≥ 400 and no divergences required). Where sites exist, per-site within-client effects were pooled in a "
        f"two-stage individual-participant-data meta-analysis ({_cite('Flückiger et al., 2020')})."
    ]
    if "mixed_models" in tables and (tables["mixed_models"]["model"] == "lagged_latent").any():
        methods.append(
            "A dynamic multilevel model in the spirit of dynamic structural equation modelling "
            f"({_cite('Asparouhov et al., 2018', 'McNeish & Hamaker, 2020')}) estimated latent client levels and "
            "linear trends of alliance and outcome, with both series autoregressive and cross-lagged in both "
            "directions, random client slopes of the lagged alliance effect, and missing sessions and blank cells "
            "imputed, so that the within-client lagged effect is not confounded by trends, symptom feedback or "
            "observed-mean centring."
        )
    results = []
    headline = f"The session-level dataset holds {design}."
    if "mixed_models" in tables:
        mm = tables["mixed_models"]
        wb = mm[(mm["model"] == "within_between") & (mm["engine"] == "mixedlm")].set_index("term")
        parts = [f"{TERM_TEXT[t]} {_coef(wb.loc[t], pct)}" for t in TERM_TEXT if t in wb.index]
        if parts:
            headline = (
                f"In {design}, the alliance effect on outcome was "
                + "; ".join(parts)
                + " (REML mixed model `within_between`)."
            )
        results.append(headline)
        lagged = mm[(mm["model"] == "lagged") & (mm["engine"] == "mixedlm")].set_index("term")
        if "alliance_within" in lagged.index:
            results.append(
                "In the lagged model, the previous session's within-client alliance predicted the next "
                f"outcome with {_coef(lagged.loc['alliance_within'], pct)}."
            )
        pymc = mm[mm["engine"] == "pymc"]
        for model, part in pymc.groupby("model", sort=False):
            part = part.set_index("term")
            if model == "lagged_latent" and {"alliance_within", "outcome_to_alliance"} <= set(part.index):
                results.append(
                    "In the dynamic multilevel model `lagged_latent` (latent client levels and trends), the previous "
                    f"session's alliance predicted the next outcome with {_coef(part.loc['alliance_within'], pct)}, "
                    f"and the previous outcome the next alliance with {_coef(part.loc['outcome_to_alliance'], pct)}."
                )
                continue
            if "alliance_within" in part.index:
                results.append(
                    f"Bayesian `{model}` model: within-client alliance {_coef(part.loc['alliance_within'], pct)}."
                )
    if "site_effects" in tables:
        se = tables["site_effects"]
        pooled = se[(se["site"] == "pooled") & (se["model"] == "within_between")]
        if len(pooled):
            row = pooled.iloc[0]
            results.append(
                f"Pooled over {int((se['model'] == 'within_between').sum()) - 1} sites, the within-client "
                f"effect was b = {num(row['estimate'], 3)}, {pct} CI "
                f"{interval(row['ci_lb'], row['ci_ub'], num, digits=3)} (τ² = {small(row['tau2'])})."
            )
    if "client_level" in tables:
        cl = tables["client_level"]
        overall = cl[cl["group"] == "all"]
        if len(overall):
            row = overall.iloc[0]
            results.append(
                f"At the client level, early alliance and residualised outcome change correlated "
                f"r = {bounded(row['r'])}, {pct} CI {interval(row['ci_lb'], row['ci_ub'])}, "
                f"{p_text(row['pval'])} (n = {int(row['n'])} clients)."
            )
    if "ruptures" in tables:
        ru = tables["ruptures"]
        summ = ru[ru["kind"] == "summary"]
        if len(summ):
            row = summ.iloc[0]
            results.append(
                f"Rupture–repair: {int(row['n_episodes'])} episodes were found in {int(row['n_clients_with_episode'])} "
                f"of {int(row['n_clients'])} clients; {int(row['n_repaired'])} were repaired, "
                f"{int(row['n_unrepaired'])} were not and {int(row['n_censored'])} were censored."
            )
    body = (
        _first_line(dataset)
        + f"# {dataset.label}: session-level methods and results\n\n## Methods\n\n"
        + "\n\n".join(methods)
        + "\n\n## Results\n\n"
        + "\n\n".join(results or [headline])
        + "\n"
    )
    return Summary(body + "\n## References\n\n" + _references(body) + "\n", headline)
