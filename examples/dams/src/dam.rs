//! Dams: the record, the add form and its validation, and the map-like plot of their locations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who may own a dam: the form offers exactly these.
pub const OWNERS: &[&str] = &[
    "Bureau of Reclamation",
    "U.S. Army Corps of Engineers",
    "Tennessee Valley Authority",
    "State agency",
    "Municipal utility",
    "Private company",
];

/// Longest name and river accepted, in characters.
const MAX_TEXT: usize = 100;

/// A stored dam.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dam {
    /// The database's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Who owns it (one of [`OWNERS`]).
    pub owner: String,
    /// The river it dams.
    pub river: String,
    /// When it was completed: YYYY-MM-DD.
    pub built: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// The user who added it.
    pub added_by: String,
}

/// A dam that passed validation, ready to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDam {
    /// Its name.
    pub name: String,
    /// Who owns it.
    pub owner: String,
    /// The river it dams.
    pub river: String,
    /// YYYY-MM-DD.
    pub built: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
}

/// The add form as submitted: every field as typed (missing fields are empty).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DamForm {
    /// Name, as typed.
    pub name: String,
    /// Owner, as chosen.
    pub owner: String,
    /// River, as typed.
    pub river: String,
    /// Completion date, as typed.
    pub built: String,
    /// Latitude, as typed.
    pub latitude: String,
    /// Longitude, as typed.
    pub longitude: String,
    /// The form's CSRF token.
    #[serde(skip_serializing)]
    pub csrf_token: String,
}

/// Errors by field name, for the template to show beside each field.
pub type FieldErrors = BTreeMap<&'static str, String>;

const REQUIRED: &str = "This field is required.";

fn text_field(errors: &mut FieldErrors, field: &'static str, value: &str) -> String {
    let v = value.trim();
    if v.is_empty() {
        errors.insert(field, REQUIRED.into());
    } else if v.chars().count() > MAX_TEXT {
        errors.insert(field, format!("Use at most {MAX_TEXT} characters."));
    } else if v.chars().any(char::is_control) {
        errors.insert(field, "Use letters, digits and punctuation only.".into());
    }
    v.to_owned()
}

fn number_field(
    errors: &mut FieldErrors,
    field: &'static str,
    label: &str,
    value: &str,
    limit: f64,
) -> f64 {
    let v = value.trim();
    if v.is_empty() {
        errors.insert(field, REQUIRED.into());
        return 0.0;
    }
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && (-limit..=limit).contains(&x) => x,
        Ok(_) => {
            errors.insert(
                field,
                format!("{label} must be between -{limit} and {limit}."),
            );
            0.0
        }
        Err(_) => {
            errors.insert(field, "Enter a number, such as 36.016.".into());
            0.0
        }
    }
}

/// Parses YYYY-MM-DD into a real calendar date.
fn parse_date(s: &str) -> Option<time::Date> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

impl DamForm {
    /// Checks every field; `Err` holds one message per bad field. `today` bounds the date built.
    pub fn validate(&self, today: time::Date) -> Result<NewDam, FieldErrors> {
        let mut errors = FieldErrors::new();
        let name = text_field(&mut errors, "name", &self.name);
        let river = text_field(&mut errors, "river", &self.river);
        let owner = self.owner.trim();
        if owner.is_empty() {
            errors.insert("owner", REQUIRED.into());
        } else if !OWNERS.contains(&owner) {
            errors.insert("owner", "Choose an owner from the list.".into());
        }
        let built = self.built.trim();
        if built.is_empty() {
            errors.insert("built", REQUIRED.into());
        } else {
            match parse_date(built) {
                None => {
                    errors.insert(
                        "built",
                        "Enter a real date as YYYY-MM-DD, such as 1936-03-01.".into(),
                    );
                }
                Some(d) if d > today => {
                    errors.insert("built", "The date built cannot be in the future.".into());
                }
                Some(_) => {}
            }
        }
        let latitude = number_field(&mut errors, "latitude", "Latitude", &self.latitude, 90.0);
        let longitude = number_field(
            &mut errors,
            "longitude",
            "Longitude",
            &self.longitude,
            180.0,
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NewDam {
            name,
            owner: owner.to_owned(),
            river,
            built: built.to_owned(),
            latitude,
            longitude,
        })
    }
}

/// The plot of dam locations: an equirectangular projection of the box around them, drawn as
/// SVG in the page (no map tiles, nothing fetched).
#[derive(Debug, Serialize)]
pub struct Plot {
    /// The SVG's width.
    pub width: u32,
    /// The SVG's height.
    pub height: u32,
    /// One dot per dam.
    pub points: Vec<PlotPoint>,
    /// Vertical grid lines.
    pub meridians: Vec<GridLine>,
    /// Horizontal grid lines.
    pub parallels: Vec<GridLine>,
}

/// One dam's dot on the plot.
#[derive(Debug, Serialize)]
pub struct PlotPoint {
    /// The dam's id.
    pub id: i64,
    /// Where, across.
    pub x: f64,
    /// Where, down.
    pub y: f64,
    /// The dam's name.
    pub name: String,
    /// Its river.
    pub river: String,
    /// Label on the left of the dot when the dot is near the right edge.
    pub label_left: bool,
}

/// A grid line of the plot.
#[derive(Debug, Serialize)]
pub struct GridLine {
    /// x of a meridian or y of a parallel.
    pub at: f64,
    /// Its degrees, as shown.
    pub label: String,
}

const W: f64 = 720.0;
const H: f64 = 360.0;
const MARGIN: f64 = 28.0;

fn degrees(v: f64, pos: char, neg: char) -> String {
    let hemi = if v < 0.0 { neg } else { pos };
    let a = v.abs();
    if (a - a.round()).abs() < 1e-9 {
        format!("{a:.0}°{hemi}")
    } else {
        format!("{a:.1}°{hemi}")
    }
}

/// The plot for `dams`; `None` when there are none.
pub fn plot(dams: &[Dam]) -> Option<Plot> {
    if dams.is_empty() {
        return None;
    }
    let fold =
        |f: fn(&Dam) -> f64, pick: fn(f64, f64) -> f64| dams.iter().map(f).fold(f(&dams[0]), pick);
    let (mut lat0, mut lat1) = (
        fold(|d| d.latitude, f64::min),
        fold(|d| d.latitude, f64::max),
    );
    let (mut lon0, mut lon1) = (
        fold(|d| d.longitude, f64::min),
        fold(|d| d.longitude, f64::max),
    );
    // At least 4° each way, plus 10 % around, kept on the globe.
    let widen = |lo: &mut f64, hi: &mut f64, min_span: f64, limit: f64| {
        let span = (*hi - *lo).max(min_span) * 1.2;
        let mid = (*lo + *hi) / 2.0;
        *lo = (mid - span / 2.0).max(-limit);
        *hi = (mid + span / 2.0).min(limit);
    };
    widen(&mut lat0, &mut lat1, 4.0, 90.0);
    widen(&mut lon0, &mut lon1, 4.0, 180.0);
    // Equirectangular: a degree of longitude is cos(latitude) of a degree of latitude.
    let k = ((lat0 + lat1) / 2.0).to_radians().cos().max(0.2);
    let scale = ((W - 2.0 * MARGIN) / ((lon1 - lon0) * k)).min((H - 2.0 * MARGIN) / (lat1 - lat0));
    let (cx, cy) = ((lon0 + lon1) / 2.0, (lat0 + lat1) / 2.0);
    let x = |lon: f64| W / 2.0 + (lon - cx) * k * scale;
    let y = |lat: f64| H / 2.0 - (lat - cy) * scale;
    let step = |span: f64| {
        [0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 90.0]
            .into_iter()
            .find(|s| span / s <= 7.0)
            .unwrap_or(90.0)
    };
    let grid = |lo: f64, hi: f64, s: f64| {
        let mut v = (lo / s).ceil() * s;
        let mut out = Vec::new();
        while v <= hi && out.len() < 20 {
            out.push(v);
            v += s;
        }
        out
    };
    let (lon_step, lat_step) = (step(lon1 - lon0), step(lat1 - lat0));
    let meridians = grid(lon0, lon1, lon_step)
        .into_iter()
        .map(|lon| GridLine {
            at: x(lon),
            label: degrees(lon, 'E', 'W'),
        })
        .filter(|g| (0.0..=W).contains(&g.at))
        .collect();
    let parallels = grid(lat0, lat1, lat_step)
        .into_iter()
        .map(|lat| GridLine {
            at: y(lat),
            label: degrees(lat, 'N', 'S'),
        })
        .filter(|g| (0.0..=H).contains(&g.at))
        .collect();
    let points = dams
        .iter()
        .map(|d| {
            let px = x(d.longitude);
            PlotPoint {
                id: d.id,
                x: (px * 10.0).round() / 10.0,
                y: (y(d.latitude) * 10.0).round() / 10.0,
                name: d.name.clone(),
                river: d.river.clone(),
                label_left: px > W * 0.7,
            }
        })
        .collect();
    Some(Plot {
        width: W as u32,
        height: H as u32,
        points,
        meridians,
        parallels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> time::Date {
        time::Date::from_calendar_date(2026, time::Month::November, 22).unwrap()
    }

    fn good() -> DamForm {
        DamForm {
            name: " Hoover Dam ".into(),
            owner: "Bureau of Reclamation".into(),
            river: "Colorado River".into(),
            built: "1936-03-01".into(),
            latitude: "36.016".into(),
            longitude: "-114.738".into(),
            csrf_token: String::new(),
        }
    }

    #[test]
    fn a_good_form_validates() {
        let d = good().validate(today()).unwrap();
        assert_eq!(d.name, "Hoover Dam");
        assert_eq!(d.latitude, 36.016);
    }

    #[test]
    fn dates_are_real_and_not_in_the_future() {
        for bad in [
            "1936-02-30",
            "1936-3-1",
            "36-03-01",
            "1936/03/01",
            "2026-11-23",
            "x",
        ] {
            let mut f = good();
            f.built = bad.into();
            let e = f.validate(today()).unwrap_err();
            assert!(e.contains_key("built"), "{bad}");
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
        }
        let mut f = good();
        f.built = "2026-11-22".into();
        assert!(f.validate(today()).is_ok());
    }

    #[test]
    fn the_plot_keeps_points_inside() {
        let dams: Vec<Dam> = [(36.0, -114.7), (47.9, -118.9), (36.2, -84.1)]
            .iter()
            .enumerate()
            .map(|(i, &(lat, lon))| Dam {
                id: i as i64,
                name: format!("d{i}"),
                owner: OWNERS[0].into(),
                river: "r".into(),
                built: "2000-01-01".into(),
                latitude: lat,
                longitude: lon,
                added_by: "t".into(),
            })
            .collect();
        let p = plot(&dams).unwrap();
        for pt in &p.points {
            assert!(
                (0.0..=W).contains(&pt.x) && (0.0..=H).contains(&pt.y),
                "{pt:?}"
            );
        }
        // North is up, east is right.
        assert!(p.points[1].y < p.points[0].y);
        assert!(p.points[2].x > p.points[0].x);
        assert!(!p.meridians.is_empty() && !p.parallels.is_empty());
        assert!(plot(&[]).is_none());
        // One dam alone still gets a sensible box.
        assert_eq!(plot(&dams[..1]).unwrap().points[0].x, W / 2.0);
    }
}
