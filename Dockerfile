# The recovery service: `tinker-recovery serve` on port 8000, SQLite on /data.
#
#   docker build -t tinker-recovery .
#   docker run -p 8000:8000 -v recovery-data:/data \
#     -e RECOVERY_API_TOKENS=change-me -e TINKER_API_KEY=tml-... tinker-recovery
#
# The image listens on 0.0.0.0, so the service refuses to start without
# RECOVERY_API_TOKENS. For Postgres, set RECOVERY_DATABASE_URL to a
# postgresql+asyncpg:// URL. Migrations run at start (RECOVERY_MIGRATE_ON_START).

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 recovery \
    && useradd --system --uid 10001 --gid recovery --home-dir /data \
       --no-create-home --shell /usr/sbin/nologin recovery
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels

WORKDIR /data
RUN chown recovery:recovery /data
VOLUME /data
ENV RECOVERY_DATABASE_URL=sqlite+aiosqlite:////data/recovery.db \
    RECOVERY_HOST=0.0.0.0 \
    RECOVERY_PORT=8000

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RECOVERY_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["tinker-recovery", "serve"]
