//! The dams app in a real headless Chromium: two logged-in pages; the viewer's notification
//! socket drops and reconnects; a dam added in one page makes the other show the "new dam"
//! dialog, whose Refresh shows the new dam and whose Nevermind closes it; a bad form shows its
//! errors beside the fields and notifies nobody.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dams::db::Db;
use dams::users::{Users, hash_password};
use switchboard::{InMemoryLayer, Layer};
use test_support::TempDir;
use test_support::browser::Browser;

async fn log_in(b: &Browser, base: &str, user: &str, password: &str) {
    b.client
        .goto(&format!("{base}accounts/login/?next=/dams/"))
        .await
        .unwrap();
    b.type_into("#id_username", user).await;
    b.type_into("#id_password", password).await;
    b.click("#login").await;
    b.wait_for_text("#whoami", user).await;
    // The notifications socket is open.
    b.wait_for_text("#live", "live").await;
}

async fn fill_dam(b: &Browser, name: &str, lat: &str, lon: &str) {
    b.wait_for_visible("#id_name").await;
    b.type_into("#id_name", name).await;
    b.set_value("#id_owner", "Private company").await;
    b.type_into("#id_river", "Snake River").await;
    b.set_value("#id_built", "2001-05-17").await;
    b.type_into("#id_latitude", lat).await;
    b.type_into("#id_longitude", lon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dam_added_in_one_page_pops_the_dialog_in_the_other() {
    let dir = TempDir::new("dams-browser");
    let db = Db::open(&dir.path().join("dams.sqlite"), true).unwrap();
    let users = Users::new(vec![
        Users::parse_flag(&format!(
            "editor:view,add:{}",
            hash_password("editor-pw").unwrap()
        ))
        .unwrap(),
        Users::parse_flag(&format!(
            "viewer:view:{}",
            hash_password("viewer-pw").unwrap()
        ))
        .unwrap(),
    ])
    .unwrap();
    let layer = Layer::new(InMemoryLayer::default());
    let addr = test_support::serve(dams::router(db, users, layer, dams::Settings::default())).await;
    let base = format!("http://{addr}/");
    let (Some(editor), Some(viewer)) = tokio::join!(Browser::start(), Browser::start()) else {
        return;
    };
    log_in(&editor, &base, "editor", "editor-pw").await;
    log_in(&viewer, &base, "viewer", "viewer-pw").await;
    // The viewer's notification socket drops (a network blip): switchboard.js reconnects it,
    // and the dialog below comes through the new one.
    viewer
        .client
        .execute("window.dams.client.socket.close()", vec![])
        .await
        .unwrap();
    viewer.wait_for_text("#live", "offline").await;
    viewer.wait_for_text("#live", "live").await;
    viewer.wait_for_text("#dams td.name", "Hoover Dam").await;
    assert_eq!(
        viewer.texts(".dam-point").await.len(),
        8,
        "eight dots on the plot"
    );
    assert!(!viewer.is_displayed("#add-dam").await, "viewer may not add");
    viewer.screenshot("dams-home").await;

    // The editor adds a dam through the form.
    editor.click("#add-dam").await;
    fill_dam(&editor, "Test Dam", "43.512", "-112.034").await;
    editor.screenshot("dams-add-form").await;
    editor.click("#save").await;
    editor.wait_for_text("#flash", "Test Dam was added").await;
    editor.wait_for_text("#dams td.name", "Test Dam").await;

    // The viewer's open page shows the dialog; the table does not have the dam yet.
    viewer.wait_for_visible("#new-dam-modal").await;
    viewer
        .wait_for_text(
            "#new-dam-text",
            "A new dam has been added. Refresh this page to load it.",
        )
        .await;
    viewer.wait_for_text("#new-dam-names", "Test Dam").await;
    assert!(
        viewer.is_displayed("#modal-refresh").await && viewer.is_displayed("#modal-dismiss").await
    );
    assert!(
        !viewer
            .texts("#dams td.name")
            .await
            .iter()
            .any(|t| t == "Test Dam")
    );
    viewer.screenshot("dams-modal").await;
    // The editor's page (loaded after the add) shows no dialog.
    assert!(!editor.is_displayed("#new-dam-modal").await);

    // Refresh loads it.
    viewer.click("#modal-refresh").await;
    viewer.wait_for_text("#dams td.name", "Test Dam").await;
    assert!(!viewer.is_displayed("#new-dam-modal").await);
    assert_eq!(viewer.texts(".dam-point").await.len(), 9);
    viewer.wait_for_text("#live", "live").await;

    // Nevermind closes the dialog and leaves the page as it was.
    editor.click("#add-dam").await;
    fill_dam(&editor, "Second Dam", "44.1", "-110.2").await;
    editor.click("#save").await;
    editor.wait_for_text("#flash", "Second Dam was added").await;
    viewer.wait_for_visible("#new-dam-modal").await;
    viewer.wait_for_text("#new-dam-names", "Second Dam").await;
    viewer.click("#modal-dismiss").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!viewer.is_displayed("#new-dam-modal").await);
    assert!(
        !viewer
            .texts("#dams td.name")
            .await
            .iter()
            .any(|t| t == "Second Dam")
    );

    // A bad form: errors beside the fields, nothing stored, nobody notified.
    editor.click("#add-dam").await;
    fill_dam(&editor, "", "95", "-110.2").await;
    editor.click("#save").await;
    editor
        .wait_for_text("#error-name", "This field is required.")
        .await;
    editor
        .wait_for_text("#error-latitude", "Latitude must be between -90 and 90.")
        .await;
    assert!(editor.is_displayed("#error-latitude").await);
    assert!(editor.texts("#error-owner").await.is_empty());
    editor.screenshot("dams-form-errors").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !viewer.is_displayed("#new-dam-modal").await,
        "a bad form notified"
    );

    editor.close().await;
    viewer.close().await;
}
