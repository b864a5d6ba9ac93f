-- MemoriesDB 0.1.0 -> 0.2.0. Run by ALTER EXTENSION memoriesdb UPDATE, never by hand.
-- Every change to the schema after 0.1.0 goes here, written so that the result equals a fresh
-- install of 0.2.0 (tests/upgrade.rs compares the two catalogs object by object).
\echo Use "ALTER EXTENSION memoriesdb UPDATE" to load this file. \quit
