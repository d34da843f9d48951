-- A registration's event and user are checked by the writer, not by foreign keys. Every
-- statement that writes registration rows updates their event's row first, at the version its
-- actor holds, and writes nothing when that row is missing or elsewhere; the user comes from a
-- verified token or, for a bus command, a lookup of the user. Neither events nor users are ever
-- deleted (an event is marked deleted). The keys' checks cost each inserted row two lookups and
-- a share lock on its user's row: more than half of a batch's time in the database.
ALTER TABLE event_registrations DROP CONSTRAINT event_registrations_event_id_fkey;
ALTER TABLE event_registrations DROP CONSTRAINT event_registrations_user_id_fkey;
