"""Synthetic bi-temporal aerial scenes with change labels: the project's built-in default data.

Every pair shows one procedurally drawn landscape at two dates: field parcels with crop rows,
meadow, forest, bare soil, lakes and rivers, roads, and buildings that cast shadows. Between
the dates some objects change (new or demolished buildings, land-cover conversion, greenhouses,
water expansion or retreat, new hardened surfaces, new roads, whole new developments); those
pixels are labelled. Other differences are nuisances and stay unlabelled: illumination, haze,
seasonal colour of vegetation, shadow direction, blur, sensor noise and sub-pixel
misregistration of the second image.

The label comes from the scene, not from the pixels: a pixel is changed when the surface seen
on top differs between the dates, and a change always replaces one land-cover class by another,
so every labelled pixel differs visibly. Change area ratios (CAR) follow a JL1-CD-like mixture
(most images below 5 %, a long tail up to 100 %, some without change), stratified per split so
each partition of the ``three`` CAR scheme gets images even for small splits.
"""

from cdkd.data.synthetic.changes import target_cars
from cdkd.data.synthetic.pair import SyntheticPair, make_pair
from cdkd.data.synthetic.writer import (
    GENERATOR_VERSION,
    MANIFEST_NAME,
    NAMINGS,
    generate_dataset,
)

__all__ = [
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "NAMINGS",
    "SyntheticPair",
    "generate_dataset",
    "make_pair",
    "target_cars",
]
