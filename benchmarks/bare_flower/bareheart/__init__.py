"""bareheart: plain Flower on the UCI heart-disease silos."""
