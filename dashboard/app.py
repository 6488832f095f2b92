"""slidemil review dashboard: ``streamlit run dashboard/app.py``.

Reads the project read-only: the MLflow store (``$MLFLOW_TRACKING_URI`` or ``<root>/mlflow.db``) and the DVC
outputs named in ``params.yaml``. ``$SLIDEMIL_PROJECT_ROOT`` points it at another project folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CODE_ROOT = str(Path(__file__).resolve().parents[1])
if _CODE_ROOT not in sys.path:  # `streamlit run` puts only dashboard/ on the path; pages import dashboard.*
    sys.path.insert(0, _CODE_ROOT)

import streamlit as st  # noqa: E402

from dashboard import data_access as da  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="slidemil dashboard", page_icon=":material/biotech:", layout="wide")
nav = st.navigation([
    st.Page(VIEWS / "runs.py", title="Runs", icon=":material/monitoring:", default=True),
    st.Page(VIEWS / "slides.py", title="Slides", icon=":material/biotech:"),
    st.Page(VIEWS / "registry.py", title="Registry", icon=":material/verified:"),
    st.Page(VIEWS / "external.py", title="External", icon=":material/travel_explore:"),
    st.Page(VIEWS / "data.py", title="Data", icon=":material/fact_check:"),
])
project = da.get_project()
with st.sidebar:
    st.caption(f"Project: `{project.root}`")
    st.caption(f"MLflow: `{project.tracking_uri}`")
    if not project.params_found:
        st.caption(f"No params.yaml here: using `{da.DEFAULT_PARAMS_FILE}`.")
nav.run()
