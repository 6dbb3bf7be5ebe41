//! Headless Chromium (Debian's `chromium` + `chromium-driver`) driven through WebDriver.

use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::{ChildGuard, TempDir, executable, free_port, spawn_group};

/// One chromedriver with one headless browser session.
pub struct Browser {
    pub client: Client,
    _driver: ChildGuard,
    _profile: TempDir,
}

fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Starts chromedriver on a free port; retries on another port if it exits or does not listen
/// (the port can be taken between choosing it and chromedriver binding it).
async fn start_driver() -> (u16, ChildGuard) {
    for _attempt in 0..3 {
        let port = free_port();
        // Without --allowed-ips chromedriver listens on loopback only (with it, on every
        // interface, filtering by address).
        let mut driver = spawn_group(&chromedriver(), &[&format!("--port={port}")]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = driver.0.try_wait() {
                eprintln!("chromedriver on port {port} exited ({status}); retrying");
                break;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return (port, driver);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!(
        "chromedriver did not start after 3 attempts (run with SWITCHBOARD_TEST_LOG=1 to see its output)"
    );
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session; `None` (a skip) when
    /// chromium or chromedriver is not installed.
    pub async fn start() -> Option<Browser> {
        for program in [chromium(), chromedriver()] {
            if !executable(&program) {
                return super::skip(&format!(
                    "a headless Chromium: {program} is not installed (Debian's chromium and \
                     chromium-driver; scripts/test installs them)"
                ));
            }
        }
        // Two rustls crypto providers are compiled in (fantoccini's and reqwest's): choose one
        // for the process, or rustls refuses to guess. Failing means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (port, driver) = start_driver().await;
        let profile = TempDir::new(&format!("chromium-{port}"));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let client = ClientBuilder::rustls()
            .unwrap() // ok: test harness, a panic fails the calling test
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("could not open a chromium session: {e}"));
        Some(Browser {
            client,
            _driver: driver,
            _profile: profile,
        })
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
            .unwrap(); // ok: test harness, a panic fails the calling test
        e.clear().await.unwrap(); // ok: test harness, a panic fails the calling test
        e.send_keys(text).await.unwrap(); // ok: test harness, a panic fails the calling test
    }

    /// Clicks the element matching `css` once it is enabled.
    pub async fn click(&self, css: &str) {
        let e = self
            .client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap(); // ok: test harness, a panic fails the calling test
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let enabled = e.is_enabled().await.unwrap(); // ok: test harness, a panic fails the calling test
            if enabled {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} stays disabled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        e.click().await.unwrap(); // ok: test harness, a panic fails the calling test
    }

    /// The value of attribute `name` of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.ok()?;
        e.attr(name).await.ok().flatten()
    }

    /// Sets the value of the form field matching `css` by script (date pickers and selects
    /// differ between locales when typed into) and fires `input` and `change`.
    pub async fn set_value(&self, css: &str, value: &str) {
        self.client
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap(); // ok: test harness, a panic fails the calling test
        let script = "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
                      e.dispatchEvent(new Event('input', {bubbles: true})); \
                      e.dispatchEvent(new Event('change', {bubbles: true}));";
        self.client
            .execute(script, vec![css.into(), value.into()])
            .await
            .unwrap(); // ok: test harness, a panic fails the calling test
    }

    /// Whether an element matching `css` is displayed.
    pub async fn is_displayed(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Waits until an element matching `css` is displayed.
    pub async fn wait_for_visible(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.is_displayed(css).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} is not displayed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page when `SWITCHBOARD_SCREENSHOTS` names a directory (for a person
    /// to look at; the tests never depend on it, and without the variable it does nothing).
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("SWITCHBOARD_SCREENSHOTS") else {
            return;
        };
        // Let CSS transitions finish.
        tokio::time::sleep(Duration::from_millis(700)).await;
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png);
        }
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
