"""The one house style of every figure: fonts, sizes, colour-blind-safe palette, SYNTHETIC marking, saving.

Every figure module draws inside ``plt.rc_context(STYLE)``, takes colours from :data:`PALETTE`, titles
itself with :func:`title` (which marks SYNTHETIC data) and is written by :func:`save_figure` as a vector
PDF and a PNG, atomically and without timestamps, so reruns give identical bytes.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from alliancemeta.core.tables import atomic_path

#: rcParams for every figure: serif-free, print sizes, no chart junk.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType so text stays editable in journals' tools
    "svg.hashsalt": "alliancemeta",
}


PNG_DPI = 200
#: A figure taller than one page is written at this resolution (a forest plot of 400 effects stays < 3 MB).
LONG_PNG_DPI = 120


_PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None}


def save_figure(fig, pdf_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Save ``fig`` as PDF and PNG atomically, without timestamps, so reruns give identical bytes."""
    with atomic_path(pdf_path) as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight", metadata=_PDF_METADATA)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)



def save_pages(whole, pages, pdf_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """A long figure: ``pages`` as a multi-page PDF, ``whole`` (the same plot in one piece) as the PNG."""
    from matplotlib.backends.backend_pdf import PdfPages

    with atomic_path(pdf_path) as tmp:
        with PdfPages(tmp, metadata=_PDF_METADATA) as pdf:
            for page in pages:
                pdf.savefig(page, bbox_inches="tight")
    with atomic_path(png_path) as tmp:
        whole.savefig(tmp, format="png", dpi=PNG_DPI if len(pages) == 1 else LONG_PNG_DPI, bbox_inches="tight",
                      metadata={"Software": None})
    for fig in {id(f): f for f in [whole, *pages]}.values():
        plt.close(fig)


#: Colour-blind-safe qualitative palette (Okabe & Ito 2008, "Color universal design"), by role.
PALETTE = {
    "accent": "#0072B2",  # blue: the pooled estimate, the headline model
    "highlight": "#D55E00",  # vermillion: flagged, influential, imputed
    "second": "#E69F00",  # orange: a second model or engine
    "third": "#009E73",  # bluish green
    "fourth": "#CC79A7",  # reddish purple
    "muted": "0.35",  # dark grey: individual studies
    "light": "0.78",  # light grey: reference lines, MCMC histograms
}


def title(ax, text: str, dataset_label: str = "") -> None:
    """Left-aligned title ``"<dataset label>: <text>"``; the label carries the SYNTHETIC warning."""
    ax.set_title(f"{dataset_label}: {text}" if dataset_label else text, loc="left")


def unavailable(name: str, reason: str, dataset_label: str = ""):
    """A figure that states why ``name`` cannot be drawn for this dataset (e.g. k < 3)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.0, 1.6))
        ax.axis("off")
        ax.text(0.0, 0.5, f"{name}: not available for this dataset.\n{reason}", va="center", fontsize=8)
        title(ax, name, dataset_label)
    return fig
