//! Headless Chromium (Debian's `chromium` + `chromium-driver`) driven through WebDriver.

use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::{ChildGuard, free_port, spawn, wait_for_port};

/// One chromedriver with one headless browser session.
pub struct Browser {
    pub client: Client,
    _driver: ChildGuard,
    _profile: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session.
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = spawn(
            &chromedriver(),
            &[&format!("--port={port}"), "--allowed-ips=127.0.0.1"],
        );
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(20),
        )
        .await;
        let profile = std::env::temp_dir().join(format!(
            "switchboard-chromium-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("could not open a chromium session: {e}"));
        Browser {
            client,
            _driver: driver,
            _profile: tempdir::Dir(profile),
        }
    }

    /// Waits until `css` matches an element whose text contains `text`.
    pub async fn wait_for_text(&self, css: &str, text: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.texts(css).await.iter().any(|t| t.contains(text)) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no {css} containing {text:?}; have {:?}",
                    self.texts(css).await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(elems) = self.client.find_all(Locator::Css(css)).await {
            for e in elems {
                if let Ok(t) = e.text().await {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Types into the input matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Clicks the element matching `css` once it is enabled.
    pub async fn click(&self, css: &str) {
        let e = self
            .client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !e.is_enabled().await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} stays disabled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        e.click().await.unwrap();
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
