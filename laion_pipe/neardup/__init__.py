"""Near-duplicate images: the same picture served under many URLs (re-encoded, resized, cropped,
watermarked), found and removed at select time, and kept away from evaluation.

Two detectors, each a counted drop reason of `select` (schema.DROP_REASONS):

- `near_duplicate`: a 64-bit perceptual hash (DCT pHash, as imagehash's) of each stored image,
  computed at download from the resized pixels (`phash` column of `images/{subset}/NNNNN.parquet`),
  with the mean colour of each quadrant (`colour_grid`); two images are copies when their hashes
  differ in at most `select.neardup.phash_max_distance` bits and their colour grids by at most
  `colour_max_difference` levels. Catches re-encodes and resizes (the hash is of the low
  frequencies of a 32x32 grey thumbnail; the grid tells apart the same layout in other colours).
- `semantic_duplicate`: SemDeDup (Abbas et al. 2023) on the score stage's CLIP image embeddings:
  k-means clusters, then within each cluster two images are copies when their cosine is at least
  1 - `select.neardup.eps`. Catches what changes pixels but not content (crops, overlays) with a
  CLIP that sees content; pairs split across two clusters are missed, as in SemDeDup.

The survivor rule (`rank`): of two copies, the one with the higher CLIP similarity stays, then
the larger original resolution, then the earlier in select's input order (subset, shard, key).
A pair is dropped when *any* higher-ranked copy exists (SemDeDup's rule, which is not
transitive: it never needs a global union of groups).

Both run on Dask as phases of the select stage with bounded memory (`phases.py`): a map over the
input shards writes hash bands and cluster members into bucket files, a reduce per bucket finds
the dropped rows; `train/decontaminate.py` uses the same features against evaluation images.
"""
