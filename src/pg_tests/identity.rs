//! current_memory_user() is cached per statement (src/identity.rs). A pg_test body is one
//! statement, so these tests check that every change the answer depends on clears the cache.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::{one, uuid_of};
    use pgrx::prelude::*;

    const OTHER_USER: &str = "00000000-0000-0000-0000-0000000000b2";

    fn acting() -> Option<String> {
        Spi::connect_mut(|c| {
            c.update("SELECT current_memory_user()", None, &[]).unwrap().first().get_one::<pgrx::Uuid>().unwrap()
        })
        .map(|u| u.to_string())
    }

    #[pg_test]
    fn mapping_a_role_counts_within_the_statement() {
        assert_eq!(acting(), None, "the test superuser is mapped to nobody yet");
        let mapped = uuid_of("SELECT create_user('me', current_user)");
        assert_eq!(acting(), Some(mapped.clone()));
        Spi::run("UPDATE users SET db_role = NULL WHERE db_role = current_user").unwrap();
        assert_eq!(acting(), None, "unmapping counts at once");
    }

    #[pg_test]
    fn a_rolled_back_mapping_is_forgotten() {
        Spi::run(
            "DO $$ BEGIN
                 PERFORM create_user('brief', current_user);
                 PERFORM current_memory_user();
                 RAISE EXCEPTION 'undo';
             EXCEPTION WHEN raise_exception THEN NULL;
             END $$",
        )
        .unwrap();
        assert_eq!(acting(), None);
        assert_eq!(one::<i64>("SELECT count(*) FROM users WHERE name = 'brief'"), 0);
    }

    #[pg_test]
    fn assertion_and_role_are_part_of_the_answer() {
        Spi::run(&format!("INSERT INTO users (id, name) VALUES ('{OTHER_USER}', 'other')")).unwrap();
        Spi::run("CREATE ROLE mdb_cache_app; GRANT memoriesdb_user, memoriesdb_trusted TO mdb_cache_app").unwrap();
        Spi::run(&format!("SELECT set_config('app.current_user', '{OTHER_USER}', true)")).unwrap();
        assert_eq!(acting(), Some(OTHER_USER.to_string()), "the superuser may assert");
        Spi::run("SET LOCAL ROLE mdb_cache_app").unwrap();
        assert_eq!(acting(), Some(OTHER_USER.to_string()), "a trusted role may assert");
        Spi::run("SELECT set_config('app.current_user', '', true)").unwrap();
        assert_eq!(acting(), None, "no assertion, no mapping");
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test(error = "role \"mdb_cache_app\" may not act as user 00000000-0000-0000-0000-0000000000b2: app.current_user is honoured only for members of memoriesdb_trusted")]
    fn revoking_trust_counts_within_the_statement() {
        Spi::run(&format!("INSERT INTO users (id, name) VALUES ('{OTHER_USER}', 'other')")).unwrap();
        Spi::run("CREATE ROLE mdb_cache_app; GRANT memoriesdb_user, memoriesdb_trusted TO mdb_cache_app").unwrap();
        Spi::run(&format!("SELECT set_config('app.current_user', '{OTHER_USER}', true)")).unwrap();
        Spi::run("SET LOCAL ROLE mdb_cache_app").unwrap();
        assert_eq!(acting(), Some(OTHER_USER.to_string()));
        Spi::run("RESET ROLE; REVOKE memoriesdb_trusted FROM mdb_cache_app; SET LOCAL ROLE mdb_cache_app").unwrap();
        acting();
    }

    #[pg_test(error = "app.current_user is not a valid user id: \"01a21f03-nope\"")]
    fn a_malformed_assertion_is_refused() {
        Spi::run("SELECT set_config('app.current_user', '01a21f03-nope', true)").unwrap();
        acting();
    }
}
