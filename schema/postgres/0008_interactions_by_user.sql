-- A user's latest interaction by id, for the recommendations' check that a user did nothing
-- since the model was trained.
CREATE INDEX interactions_user_id ON interactions (user_id, id);
