"""Every figure of the library and the notebook widget wrapper, in one subpackage.

Every figure function returns a matplotlib ``Figure`` (:func:`plot_fourier_heat_map`: the image it
draws into an axis; :func:`plot_frequency_explorer`: the figure and its numbers) and never calls
``plt.show()``. The computations behind the figures live in the stage modules below this package
(:mod:`advcl_lite.pseudo_labels`, :mod:`advcl_lite.evaluate`, :mod:`advcl_lite.results`,
:mod:`advcl_lite.spectra`); nothing below it imports it.

* :mod:`.core` - :func:`widget`, image grids and view panels, the frequency mask and views, radial
  spectra, loss curves, the adversarial panel (generic helpers shared by the notebooks);
* :mod:`.clusters` - cluster sizes, cluster members, 2-D maps of the features (notebook 03);
* :mod:`.results` - accuracies per method and scheme, accuracy against eps (notebook 04), the leaderboard
  across schemes and DynACL's schedule (notebook 06);
* :mod:`.spectra` - Fourier heat maps, band-limited accuracy, the frequency explorer (notebook 05).
"""
from .clusters import plot_cluster_grid, plot_cluster_sizes, plot_embedding
from .core import (display_images, image_grid, plot_adversarial_panel, plot_frequency_views, plot_loss_curves,
                   plot_mask, plot_radial_spectra, plot_views, widget)
from .results import plot_accuracy_vs_eps, plot_dynacl_schedule, plot_leaderboard, plot_ra_vs_nmi, plot_results
from .spectra import plot_band_accuracy, plot_fourier_heat_map, plot_frequency_explorer, plot_heat_maps

__all__ = [
    "widget", "display_images", "image_grid", "plot_views", "plot_mask", "plot_frequency_views",
    "plot_radial_spectra", "plot_loss_curves", "plot_adversarial_panel",
    "plot_cluster_sizes", "plot_cluster_grid", "plot_embedding",
    "plot_results", "plot_accuracy_vs_eps", "plot_leaderboard", "plot_dynacl_schedule", "plot_ra_vs_nmi",
    "plot_fourier_heat_map", "plot_heat_maps", "plot_band_accuracy", "plot_frequency_explorer",
]
