"""ESamp Explorer: the Streamlit entry point. `./run app` starts it on the embedded model.

Runs before every page: the model choice in the sidebar is one choice shared by all pages."""

import streamlit as st

from app import serving
from app.render import md
from app.settings import model_picker

st.set_page_config(page_title="ESamp Explorer", page_icon=":material/explore:", layout="wide")
try:
    serving.policy()
except ValueError as exc:  # a server's setting, named, instead of a traceback on every page
    st.error(f"This server's settings are wrong: {md(exc)}")
    st.stop()
model_picker()
pages = [
    st.Page("views/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("views/sweep.py", title="Sweep", icon=":material/show_chart:"),
    st.Page("views/runs.py", title="History", icon=":material/history:", url_path="history"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
]
st.navigation(pages).run()
