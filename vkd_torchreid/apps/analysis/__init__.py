"""The paper's analyses as tools (``vkd-reid compare`` ...); see each module."""
