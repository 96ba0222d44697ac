"""ESamp Explorer: the Streamlit entry point. `./run app` starts it on the embedded model.

Runs before every page: the model choice in the sidebar is one choice shared by all pages. The pages'
links run along the top and the sidebar starts folded, so that a page has the whole width of a
classroom projector (1024 px: 864 px of content against 564 beside an open sidebar); each page says
which model it runs on and where to change it (``settings.model_caption``)."""

import logging
import os

import streamlit as st

from app import serving
from app.render import PAGE_STYLE, md
from app.settings import model_picker

# The app's own log (each generation it starts) on the server's stderr, once per process (this script
# reruns on every interaction); ESAMP_LOG_LEVEL=WARNING quiets it.
_log = logging.getLogger("app")
if not _log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    _log.addHandler(_handler)
    _log.propagate = False
    _level = os.environ.get("ESAMP_LOG_LEVEL", "INFO").upper()
    _log.setLevel(_level if isinstance(logging.getLevelName(_level), int) else logging.INFO)
st.set_page_config(page_title="ESamp Explorer", page_icon=":material/explore:", layout="wide",
                   initial_sidebar_state="collapsed")
st.html(PAGE_STYLE)  # a projector's first screen: render.py
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
st.navigation(pages, position="top").run()
