"""ESamp Explorer: the Streamlit entry point. `./run app` starts it on the embedded model."""

import streamlit as st

st.set_page_config(page_title="ESamp Explorer", page_icon=":material/explore:", layout="wide")

pages = [
    st.Page("pages/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/show_chart:"),
    st.Page("pages/runs.py", title="History", icon=":material/history:", url_path="history"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]
st.navigation(pages).run()
