//! Distances on the Earth's surface, shared by search and recommendations.

/// The mean radius of the Earth.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The great-circle distance between two points (latitude, longitude in degrees), in
/// kilometres.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paris_to_london() {
        let (paris, london) = ((48.8566, 2.3522), (51.5074, -0.1278));
        assert!((haversine_km(paris, london) - 343.5).abs() < 1.0);
        assert!(haversine_km(paris, paris).abs() < 1e-9);
    }
}
