"""The Streamlit review dashboard (``streamlit run dashboard/app.py``): runs, heatmaps, registry, data QC."""
