-- Demo schema and a least-privilege role for sluice.
-- The postgres image runs this once, on an empty data directory, as the superuser in database "shop"
-- (POSTGRES_DB). By hand: SLUICE_PGPASSWORD=... psql -U postgres -d shop -f init.sql
-- psql 15 or later (\getenv).
\set ON_ERROR_STOP on

-- The application's role: it owns the tables, and so may publish them.
CREATE ROLE shop_owner NOLOGIN;
GRANT CREATE ON SCHEMA public TO shop_owner;    -- PostgreSQL 15 no longer lets PUBLIC create in public
GRANT CREATE ON DATABASE shop TO shop_owner;    -- CREATE PUBLICATION needs CREATE on the database

SET ROLE shop_owner;

CREATE TABLE public.customers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    amount      numeric(12, 2),
    status      text NOT NULL DEFAULT 'new',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Rows that exist before sluice starts: they arrive as the snapshot (op = "r").
INSERT INTO public.customers (name, email) VALUES ('Ada', 'ada@example.com'), ('Grace', 'grace@example.com');
INSERT INTO public.orders (customer_id, amount) VALUES (1, 12.50), (2, 99.90);

-- Exactly the tables docker/sluice.toml selects, with the option sluice would create it with, so sluice
-- finds nothing to add, drop or change. Owned by shop_owner, not by sluice.
CREATE PUBLICATION sluice FOR TABLE public.orders, public.customers WITH (publish_via_partition_root = true);

RESET ROLE;

-- sluice's role: log in, open a replication connection and create its slot (REPLICATION), read the
-- captured tables for the snapshot (SELECT). Nothing else: no ownership, no superuser, no other tables.
-- The password comes from the environment; if SLUICE_PGPASSWORD is unset, :'sluice_password' stays
-- unexpanded and the statement fails, which stops the script.
\getenv sluice_password SLUICE_PGPASSWORD
CREATE ROLE sluice LOGIN REPLICATION PASSWORD :'sluice_password';
GRANT CONNECT ON DATABASE shop TO sluice;       -- PUBLIC has it by default; explicit for hardened servers
GRANT USAGE ON SCHEMA public TO sluice;         -- likewise
GRANT SELECT ON public.orders, public.customers TO sluice;
