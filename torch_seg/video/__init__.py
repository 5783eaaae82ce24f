"""Text-prompted video segmentation: the image chain's seeder finds objects on a key frame, SAM 2.1's video
predictor propagates them, re-detection adds new objects with new, stable ids.

`frames` (clip or folder -> JPEG frames), `predictor` (SAM 2.1 video predictor), `tracking` (id matching and
pixel ownership), `propagation` (`VideoTracker`: the order of work), `output` (label images, overlay video,
tracks.json), `run` (`TrackingJob` and `track_video`, what scripts/track.py calls) and `bench` (propagation speed).
"""
