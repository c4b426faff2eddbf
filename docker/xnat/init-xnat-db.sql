-- Creates XNAT's database role on the first start of the xnat-db container (run by the postgres
-- image from /docker-entrypoint-initdb.d). From NRG's xnat-docker-compose (postgres/XNAT.sql,
-- Simplified BSD licence).
\set xnat_user `echo $XNAT_DATASOURCE_USERNAME`
\set xnat_user_pw `echo $XNAT_DATASOURCE_PASSWORD`
\set xnat_db `echo $POSTGRES_DB`

create role :"xnat_user" with login password :'xnat_user_pw';
alter database :"xnat_db" owner to :"xnat_user";
