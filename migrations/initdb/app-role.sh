#!/bin/sh
# The PostgreSQL role the app serves as. docker-compose.yml mounts this file into the postgres
# image's /docker-entrypoint-initdb.d, which runs it as POSTGRES_USER on the first start of an
# empty data volume; on an older volume, run it by hand (docs/operations.md, "Upgrading"): it does nothing
# when the role exists. The role owns nothing and is granted nothing here: the app's boot
# migrates as POSTGRES_USER, the tables' owner, and then gives it exactly the privileges
# backend/roles.py lists (INSERT and SELECT on the audit trail, never UPDATE or DELETE).
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     --set app_user="$POSTGRES_APP_USER" --set app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user')
\gexec
SQL
