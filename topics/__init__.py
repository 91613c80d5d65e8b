"""The topic catalogue of pipeline and its provisioning."""

from topics.catalogue import TopicCatalogue, TopicNames, TopicSpec

__all__ = ["TopicCatalogue", "TopicNames", "TopicSpec"]
