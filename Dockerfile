# backupkit in a container next to your database.
#
#   docker build -t backupkit .
#   docker run -d --name backupkit \
#     -v /srv/backupkit/policy.toml:/etc/backupkit/policy.toml:ro \
#     -v /srv/backupkit/state:/var/lib/backupkit \
#     -e BACKUPKIT_SOURCE_PASSWORD -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     backupkit schedule run --policy /etc/backupkit/policy.toml
#
# The policy is mounted read-only; secrets come from the environment (or a 0600 file mounted
# read-only and named by password_file in the policy). See docs/operations.md.

# ---- build stage: a wheel of backupkit and its dependencies ----------------------------------
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY backupkit ./backupkit
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime stage -----------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# The MariaDB client tools replay needs (mariadb, mariadb-binlog), mariadb-backup and mbstream for
# physical backups (the container then needs the database's datadir mounted), and flock for cron.
RUN apt-get update \
 && apt-get install -y --no-install-recommends mariadb-client mariadb-backup zstd util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --system --uid 10001 --home-dir /var/lib/backupkit --create-home backupkit
USER backupkit
WORKDIR /var/lib/backupkit
ENV BACKUPKIT_STATE_DIR=/var/lib/backupkit
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
  CMD ["backupkit", "schedule", "status", "--policy", "/etc/backupkit/policy.toml", "--check"]
ENTRYPOINT ["backupkit"]
CMD ["--help"]
