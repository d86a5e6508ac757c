"""A tiny Streamlit app for the WebGL scatter browser test: N random points in a few clusters,
coloured by cluster, hover captions and images from a folder; it prints how many points the
lasso selected. N and the image folder come from the environment (SCATTER_N, SCATTER_IMAGES)."""

import os
from pathlib import Path

import numpy as np
import streamlit as st

from explorer.scatter import scatter_map


@st.cache_data
def points(n: int):
    rng = np.random.default_rng(0)
    centres = np.array([[-4.0, -2.0], [3.0, 3.0], [4.0, -3.0], [-2.0, 4.0]])
    cluster = rng.integers(0, len(centres), n)
    xy = centres[cluster] + rng.normal(0, 0.8, (n, 2))
    return xy[:, 0].astype(np.float32), xy[:, 1].astype(np.float32), np.array(list("ABCD"))[cluster]


n = int(os.environ.get("SCATTER_N", "1000"))
x, y, cluster = points(n)
folder = os.environ.get("SCATTER_IMAGES")
images = None
if folder:
    files = sorted(p.name for p in Path(folder).glob("*.png"))
    images = (Path(folder), [files[i % len(files)] for i in range(n)]) if files else None
colour = st.radio("Colour", ["cluster", "x"], horizontal=True)
selection = scatter_map(x, y, cluster if colour == "cluster" else x, labels=[f"point {i}" for i in range(n)],
                        key="map", title=colour, images=images,
                        hover_key=f"test-{n}-{folder}", height=500)
st.write(f"selected: {len(selection)}")
if selection:
    st.write(f"first selected: {selection[:5]}")
