"""Pictures of the model itself rather than of one image's explanation: filters, class impressions."""
