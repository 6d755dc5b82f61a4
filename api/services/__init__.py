"""The API's services: what a route asks for, done against the database, the store and the queue.
Routes stay thin: they parse, call one of these, and shape the answer."""
