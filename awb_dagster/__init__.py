"""awb-dagster: pinned ML instruments over plate images, with sealed-run provenance."""
