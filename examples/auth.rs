//! Securing a node: a root user, a role that may read and write `app/`, a
//! user with that role, auth on; then that user logs in (the SDK
//! authenticates with `ConnectOptions { user, password }` and again when
//! its token expires) and is refused outside `app/`. Start a node with
//! `make run`, then `cargo run --example auth`. It turns auth off again at
//! the end, so the other examples keep working.

mod common;

use common::connect_as;
use qed::client::prefix_range_end;
use qed::wire::auth::PermissionType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qed::runtime::block_on(async {
        let admin = common::connect().await?;
        admin.user_add("root", Some("root-secret")).await?;
        admin.user_grant_role("root", "root").await?;
        admin.role_add("app").await?;
        admin
            .role_grant_permission(
                "app",
                PermissionType::ReadWrite,
                "app/",
                prefix_range_end(b"app/"),
            )
            .await?;
        admin.user_add("svc", Some("svc-secret")).await?;
        admin.user_grant_role("svc", "app").await?;
        admin.auth_enable().await?;
        println!("auth enabled: root, and svc with read-write on app/");

        match admin.put("app/x", "1", None).await {
            Err(e) => println!("without credentials: {e}"),
            Ok(_) => println!("without credentials: accepted?!"),
        }
        let svc = connect_as("svc", "svc-secret").await?;
        svc.put("app/config", "v1", None).await?;
        println!("svc wrote app/config");
        match svc.put("other/key", "x", None).await {
            Err(e) => println!("svc outside app/: {e}"),
            Ok(_) => println!("svc outside app/: accepted?!"),
        }
        match connect_as("svc", "wrong").await {
            Err(e) => println!("a wrong password: {e}"),
            Ok(_) => println!("a wrong password: accepted?!"),
        }

        // Undo, as root, so the other examples run without credentials.
        let root = connect_as("root", "root-secret").await?;
        root.auth_disable().await?;
        for user in ["svc", "root"] {
            root.user_delete(user).await?;
        }
        root.role_delete("app").await?;
        root.delete("app/config", None).await?;
        println!("auth disabled again");
        Ok(())
    })
}
