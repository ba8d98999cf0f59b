"""serving/telegram"""
