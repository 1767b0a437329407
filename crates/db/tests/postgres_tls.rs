//! PostgreSQL over TLS, as `scripts/with-postgres.sh --ssl` serves it (a
//! server that rejects plain TCP, with a certificate of a CA the script
//! made): the repository contract runs there too (scripts/test.sh), and this
//! test shows that those sessions really were encrypted.

/// Under `scripts/with-postgres.sh --ssl` (a server that rejects plain
/// TCP): the URL's `sslmode=require` gives an encrypted session, the
/// script's CA verifies the server with `verify-full`, and `disable` is
/// refused, so the contract above really ran over TLS.
#[tokio::test]
async fn postgres_speaks_tls_when_the_url_asks_for_it() {
    let Ok(url) = std::env::var("POSTGRES_TEST_URL") else {
        return cyberimage_testkit::skipped("no PostgreSQL: POSTGRES_TEST_URL is not set");
    };
    if !url.contains("sslmode=require") {
        return cyberimage_testkit::skipped(
            "a plain-TCP server (scripts/with-postgres.sh --ssl runs this test)",
        );
    }
    let session_is_encrypted = |url: String| async move {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        ssl
    };
    assert!(session_is_encrypted(url.clone()).await);
    let ca = std::env::var("POSTGRES_TEST_CA").expect("the script names its CA");
    let verified = url.replace(
        "sslmode=require",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert!(session_is_encrypted(verified).await);
    let plain = url.replace("sslmode=require", "sslmode=disable");
    assert!(sqlx::PgPool::connect(&plain).await.is_err());
}
