//! The nameserver: the sharding topology, its stores and the routing snapshot.
