#!/bin/sh
# Writes XNAT's configuration from the environment on first start, then runs Tomcat.
# Adapted from NRG's xnat-docker-compose (make-xnat-config.sh, Simplified BSD licence), moved
# from build time to start time so that no password is stored in the image.
set -eu

: "${XNAT_HOME:?XNAT_HOME is not set}"
: "${XNAT_DATASOURCE_URL:?set XNAT_DATASOURCE_URL, e.g. jdbc:postgresql://xnat-db/xnat}"
: "${XNAT_DATASOURCE_USERNAME:?set XNAT_DATASOURCE_USERNAME}"
: "${XNAT_DATASOURCE_PASSWORD:?set XNAT_DATASOURCE_PASSWORD in docker/.env}"

conf="$XNAT_HOME/config/xnat-conf.properties"
if [ ! -f "$conf" ]; then
  umask 077
  cat > "$conf" <<PROPS
datasource.driver=org.postgresql.Driver
datasource.url=$XNAT_DATASOURCE_URL
datasource.username=$XNAT_DATASOURCE_USERNAME
datasource.password=$XNAT_DATASOURCE_PASSWORD

hibernate.dialect=org.hibernate.dialect.PostgreSQL9Dialect
hibernate.hbm2ddl.auto=update
hibernate.show_sql=false
hibernate.cache.use_second_level_cache=true
hibernate.cache.use_query_cache=true

spring.http.multipart.max-file-size=1073741824
spring.http.multipart.max-request-size=1073741824
PROPS
fi

if [ -n "${XNAT_EMAIL:-}" ] && [ ! -f "$XNAT_HOME/config/prefs-init.ini" ]; then
  printf '[siteConfig]\nadminEmail=%s\n' "$XNAT_EMAIL" > "$XNAT_HOME/config/prefs-init.ini"
fi

export CATALINA_OPTS="${CATALINA_OPTS:-} -Xms${XNAT_MIN_HEAP:-256m} -Xmx${XNAT_MAX_HEAP:-4g} -Dxnat.home=$XNAT_HOME"
exec "$@"
